//! `rag eval answers` and `rag eval retrieval`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rag_core::{SearchFilter, SearchMode};
use rag_ingest::IngestOptions;

use super::{dir_name, ingest_progress, progress_bar, scratch_name};
use crate::app::App;
use crate::config::Settings;
use crate::ops::eval;
use crate::ops::eval_answers as ea;
use crate::ops::eval_trace;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Answer quality on a question file (JSON lines: id, question,
    /// answerable, gold_sources, answer, must_include, kind): retrieval hits,
    /// must-include accuracy, F1, citation precision, abstention, latency,
    /// tokens and cost, overall and per kind. Writes results.jsonl,
    /// summary.json, report.md and report.html to --out; a killed run
    /// resumes where it stopped.
    Answers(EvalAnswersArgs),
    /// Retrieval quality on a BEIR-format folder (corpus.jsonl, queries.jsonl,
    /// qrels/SPLIT.tsv): nDCG@10, recall@10, recall@100 and MRR@10 per mode.
    /// The corpus is ingested into a scratch data directory, reused while
    /// unchanged.
    Retrieval(RetrievalEvalArgs),
    /// Write the answers readers rated (POST /v1/feedback, the chat page's
    /// thumbs) as a question file for `rag eval answers`: each with its
    /// question, the answer given, its cited sources, the rating and the
    /// comment. A person completes `must_include`, `answer` and
    /// `answerable`.
    ExportFeedback(ExportFeedbackArgs),
}

#[derive(clap::Args)]
pub struct ExportFeedbackArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Which ratings: down, up or all.
    #[arg(long, default_value = "all", value_parser = ["down", "up", "all"])]
    pub rating: String,
}

pub async fn export_feedback(
    settings: Settings,
    args: ExportFeedbackArgs,
) -> anyhow::Result<ExitCode> {
    let app = App::open(settings).await?;
    let rated = app.docs.rated_answers().await?;
    // Each answer labelled with the groups of the key that asked: the
    // export holds what those groups may read, and goes where they may.
    let groups: std::collections::HashMap<String, Vec<String>> = app
        .docs
        .keys()
        .await?
        .into_iter()
        .map(|k| (k.id, k.groups))
        .collect();
    let mut lines = String::new();
    let (mut down, mut up) = (0, 0);
    for a in &rated {
        let rating = a.rating.as_deref().unwrap_or("");
        if args.rating != "all" && args.rating != rating {
            continue;
        }
        if rating == "down" {
            down += 1;
        } else {
            up += 1;
        }
        let citations: Vec<rag_core::Citation> =
            serde_json::from_str(&a.citations).unwrap_or_default();
        let mut sources: Vec<String> = citations.iter().map(|c| c.source.clone()).collect();
        sources.dedup();
        // An answer readers liked is a reference and its sources are
        // gold; one they did not is only the question, to be answered by a
        // person.
        let liked = rating == "up";
        let line = serde_json::json!({
            "id": format!("feedback-{}", a.id),
            "question": a.question,
            "answerable": !(liked && a.abstained),
            "gold_sources": if liked { sources.clone() } else { vec![] },
            "answer": if liked && !a.abstained { Some(a.answer.clone()) } else { None },
            "must_include": [],
            "kind": format!("feedback-{rating}"),
            "feedback": {
                "answer_id": a.id,
                "rating": rating,
                "comment": a.comment,
                "answer_given": a.answer,
                "abstained": a.abstained,
                "cited_sources": sources,
                "asked_at": a.created_at,
                "rated_at": a.rated_at,
                // null: asked in open mode (or by a key since deleted),
                // where every document could be read.
                "groups": a.key_id.as_ref().and_then(|k| groups.get(k)),
            },
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, lines)?;
    println!(
        "wrote {} rated answers ({down} down, {up} up) to {}; complete must_include (and answer) \
         before `rag eval answers --questions {}`",
        down + up,
        args.out.display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `rag eval answers`.
#[derive(clap::Args)]
pub struct EvalAnswersArgs {
    #[arg(long)]
    pub questions: PathBuf,
    /// Ingest this folder into a scratch data directory first (reused
    /// while unchanged); without it, the configured data directory.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// A previous run's --out folder, compared in the reports.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// TOML of `metric = minimum`: exit 4 when a metric falls short.
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Price per 1,000 tokens (prompt and completion) for the cost column.
    #[arg(long, default_value_t = 0.0)]
    pub price_per_1k_tokens: f64,
    /// Start again instead of resuming the results in --out.
    #[arg(long)]
    pub fresh: bool,
    /// Keep each question's retrieval, prompt and model text in
    /// OUT/traces.jsonl, for --replay.
    #[arg(long)]
    pub record: bool,
    /// Score again the traces a --record run kept in this folder (its
    /// --out), without the model: the answer policy (admission, packing,
    /// checks, quoting, abstention) runs over the recorded passages and
    /// model text, in seconds. A question whose prompt is no longer the
    /// recorded one is asked afresh, and recorded. Always starts fresh.
    #[arg(long, value_name = "DIR")]
    pub replay: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RetrievalEvalArgs {
    #[arg(long)]
    pub beir: PathBuf,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Modes to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "dense,sparse,hybrid")]
    pub mode: Vec<SearchMode>,
    /// Scratch data directory; default DATA_DIR/eval/NAME-OF-THE-FOLDER.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub async fn answers(mut settings: Settings, args: EvalAnswersArgs) -> anyhow::Result<ExitCode> {
    let questions = ea::load_questions(&args.questions)?;
    let baseline: Option<ea::Report> = match &args.baseline {
        Some(dir) => {
            let path = dir.join("summary.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("baseline {}: {e}", path.display()))?;
            Some(serde_json::from_str(&text)?)
        }
        None => None,
    };
    if let Some(corpus) = &args.corpus {
        let dir = settings
            .data_dir
            .join("eval")
            .join(scratch_name(&settings, corpus));
        settings = settings.scratch(dir);
    }
    let app = Arc::new(App::open(settings).await?);
    if let Some(corpus) = &args.corpus {
        let files = rag_ingest::collect_files(std::slice::from_ref(corpus))?;
        let bar = progress_bar(files.len() as u64, false);
        let report = app
            .ingestor()?
            .ingest(
                &files,
                &IngestOptions::default(),
                &ingest_progress(bar.clone()),
            )
            .await?;
        bar.finish_and_clear();
        eprintln!(
            "corpus: {} documents ({} unchanged since the last run), {} chunks embedded now",
            report.documents, report.unchanged, report.embedded_chunks
        );
    }
    // Read before --out is cleared: the replay may be of the same folder.
    let traces = match &args.replay {
        Some(dir) => Some(eval_trace::read(&dir.join("traces.jsonl"))?),
        None => None,
    };
    let files = ea::OutFiles::new(&args.out)?;
    if args.fresh || traces.is_some() {
        let _ = std::fs::remove_file(&files.results);
    }
    let recording = args.record || traces.is_some();
    if recording && (args.fresh || traces.is_some()) {
        let _ = std::fs::remove_file(&files.traces);
    }
    let wanted: std::collections::HashSet<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    let mut results: Vec<ea::QuestionResult> = ea::done_results(&files.results)?
        .into_iter()
        .filter(|r| wanted.contains(r.id.as_str()))
        .collect();
    let done: std::collections::HashSet<String> = results.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<ea::Question> = questions
        .iter()
        .filter(|q| !done.contains(&q.id))
        .cloned()
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} of {} questions already answered",
            done.len(),
            questions.len()
        );
    }
    // Load the model before the clock starts for the first question (a
    // replay loads it only for a question it has to ask afresh).
    if traces.is_none() {
        app.generator().await?;
    }
    let traces = Arc::new(traces.unwrap_or_default());
    let bar = ProgressBar::new(todo.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} questions [{elapsed_precise}, ETA {eta}]",
            )
            .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let record = args.record;
    for q in todo {
        let (app, slots, traces) = (app.clone(), slots.clone(), traces.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let recorded = traces.get(&q.id);
            let how = match recorded {
                Some(trace) => ea::How::Replay(trace),
                None => ea::How::Live { record },
            };
            let (result, fresh) = ea::evaluate(&app, &q, &SearchFilter::default(), how).await?;
            anyhow::Ok((result, fresh.or_else(|| recorded.cloned())))
        });
    }
    let mut replayed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (r, trace) = joined??;
        ea::append_result(&files.results, &r)?;
        if let (true, Some(trace)) = (recording, trace) {
            eval_trace::append(&files.traces, &trace)?;
        }
        replayed += usize::from(r.replayed);
        results.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(dir) = &args.replay {
        eprintln!(
            "replayed {replayed} of {} questions from {} without the model; {} asked afresh \
             (not recorded, or their prompt changed)",
            results.len(),
            dir.display(),
            results.len() - replayed
        );
    }
    let order: std::collections::HashMap<&str, usize> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.as_str(), i))
        .collect();
    results.sort_by_key(|r| order[r.id.as_str()]);
    let report = ea::report(&results, &app, args.price_per_1k_tokens);
    std::fs::write(&files.summary, serde_json::to_string_pretty(&report)?)?;
    let markdown = ea::markdown(&report, baseline.as_ref());
    std::fs::write(&files.markdown, &markdown)?;
    std::fs::write(&files.html, ea::html(&report, &results, baseline.as_ref()))?;
    println!("{markdown}");
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.thresholds {
        let failures = ea::check_thresholds(path, &report.overall)?;
        if !failures.is_empty() {
            eprintln!("below the thresholds of {}:", path.display());
            for f in &failures {
                eprintln!("  {f}");
            }
            return Ok(ExitCode::from(4));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retrieval(settings: Settings, args: RetrievalEvalArgs) -> anyhow::Result<ExitCode> {
    let RetrievalEvalArgs {
        beir,
        split,
        mode,
        scratch,
        json,
    } = args;
    let data = eval::load(&beir, &split)?;
    let name = dir_name(&beir);
    let dir = scratch.unwrap_or_else(|| {
        settings
            .data_dir
            .join("eval")
            .join(scratch_name(&settings, &beir))
    });
    let settings = settings.scratch(dir);
    let app = App::open(settings).await?;
    let bar = progress_bar(data.corpus.len() as u64, json);
    let options = IngestOptions {
        collection: eval::COLLECTION.into(),
        ..Default::default()
    };
    let report = app
        .ingestor()?
        .ingest_inputs(&data.corpus, &options, &ingest_progress(bar.clone()))
        .await?;
    bar.finish_and_clear();
    let mut modes = serde_json::Map::new();
    for m in mode {
        let scores = eval::score(&app, &data, m).await?;
        if !json {
            println!(
                "{m:>6}: nDCG@10 {:.4}  recall@10 {:.4}  recall@100 {:.4}  MRR@10 {:.4}  ({:.1} ms/query)",
                scores.ndcg_at_10,
                scores.recall_at_10,
                scores.recall_at_100,
                scores.mrr_at_10,
                scores.ms_per_query
            );
        }
        modes.insert(m.to_string(), serde_json::to_value(scores)?);
    }
    let out = serde_json::json!({
        "dataset": name,
        "split": split,
        "queries": data.queries.len(),
        "documents": data.corpus.len(),
        "chunks": report.chunks,
        "embedded_chunks": report.embedded_chunks,
        "ingest_seconds": report.seconds,
        "embedder": app.embedder.model_id(),
        "modes": modes,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{name} {split}: {} queries over {} documents ({} chunks)",
            data.queries.len(),
            data.corpus.len(),
            report.chunks
        );
    }
    Ok(ExitCode::SUCCESS)
}
