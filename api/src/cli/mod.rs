//! The `rag` command line: one module per group of commands, one function
//! per command. `main.rs` parses and calls [`run`].

mod admin;
mod answers;
mod bench;
#[cfg(feature = "kube")]
mod cluster;
mod documents;
mod eval;
mod models;
mod sources;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rag_ingest::{DocumentOutcome, Progress};

use crate::config::Settings;

#[derive(Parser)]
#[command(
    name = "rag",
    version,
    about = "Grounded answers from your own documents"
)]
pub struct Cli {
    /// Folder holding the vector store and the metadata database.
    #[arg(long, global = true, env = "RAG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML settings file.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Ingest files or folders (recursively): .md, .markdown, .txt, .text, .html, .htm, .pdf, .docx.
    Ingest(documents::IngestArgs),
    /// Delete documents, by source (as `ingest` names it) or id: their rows
    /// and vectors, all of them.
    Delete(documents::DeleteArgs),
    /// Places documents are synced from: Git repositories and web sites.
    Sources(sources::SourcesArgs),
    /// Bring sources up to date: added, changed and deleted documents.
    Sync(sources::SyncArgs),
    /// Print the passages retrieved for a question.
    Retrieve(answers::QuestionArgs),
    /// Answer a question from the documents, with numbered sources.
    Ask(answers::QuestionArgs),
    /// Evaluations over datasets with judgements.
    Eval(eval::EvalArgs),
    /// Serve the HTTP API and the chat page. On a loopback address with no
    /// API keys it is open (no key needed); anywhere else it needs keys.
    Serve(admin::ServeArgs),
    /// Apply a Kubernetes overlay (`k8s/overlays/NAME`, rendered with
    /// `kubectl kustomize`) to the cluster of the current kubeconfig with
    /// server-side apply, then wait for its Deployments and StatefulSets.
    #[cfg(feature = "kube")]
    Deploy(cluster::DeployArgs),
    /// The Deployments and StatefulSets of a namespace and their rollouts.
    #[cfg(feature = "kube")]
    Status(cluster::StatusArgs),
    /// Serve the knowledge base over the Model Context Protocol on stdin
    /// and stdout (tools `search` and `ask`), for AI tools that start it.
    Mcp(admin::McpArgs),
    /// API keys for `serve`.
    Keys(admin::KeysArgs),
    /// Check that the metadata and the vectors agree.
    Doctor(admin::DoctorArgs),
    /// Make the vectors again with the configured embedder (after changing
    /// `embedder.model`), from the chunks stored: no source is read again.
    /// Stop the service first (the old vectors are locked while it runs);
    /// a killed run leaves the old vectors in use and the next run resumes
    /// where it stopped. Embedded vector store only.
    Reembed(admin::ReembedArgs),
    /// Measure throughput; prints JSON lines.
    Bench(bench::BenchArgs),
    /// Install or list models.
    Models(models::ModelsArgs),
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    match cli.command {
        Command::Models(args) => models::models(&settings, args),
        Command::Ingest(args) => documents::ingest(settings, args).await,
        Command::Delete(args) => documents::delete(settings, args).await,
        Command::Sources(args) => sources::sources(settings, args).await,
        Command::Sync(args) => sources::sync(settings, args).await,
        Command::Retrieve(args) => answers::retrieve(settings, args).await,
        Command::Ask(args) => answers::ask(settings, args).await,
        Command::Eval(args) => match args.command {
            eval::EvalCommand::Answers(args) => eval::answers(settings, args).await,
            eval::EvalCommand::Retrieval(args) => eval::retrieval(settings, args).await,
            eval::EvalCommand::ExportFeedback(args) => eval::export_feedback(settings, args).await,
        },
        Command::Serve(args) => admin::serve(settings, args).await,
        Command::Keys(args) => admin::keys(settings, args).await,
        Command::Mcp(args) => admin::mcp(settings, args).await,
        Command::Doctor(args) => admin::doctor(settings, args).await,
        Command::Reembed(args) => admin::reembed(settings, args).await,
        Command::Bench(args) => match args.command {
            bench::BenchCommand::Generate(args) => bench::generate(settings, args).await,
            bench::BenchCommand::Ingest(args) => bench::ingest(settings, args).await,
            bench::BenchCommand::Load(args) => bench::load(args).await,
            bench::BenchCommand::Query(args) => bench::query(settings, args).await,
        },
        #[cfg(feature = "kube")]
        Command::Deploy(args) => cluster::deploy(args).await,
        #[cfg(feature = "kube")]
        Command::Status(args) => cluster::status(args).await,
    }
}

/// Shows ingest progress on `bar`: documents done, chunks embedded, rate.
pub(crate) fn ingest_progress(bar: ProgressBar) -> impl Fn(Progress) + Send + Sync {
    let embedded = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    move |p: Progress| match p {
        Progress::Started { .. } => {}
        Progress::Embedded { chunks } => {
            let total = embedded.fetch_add(chunks, std::sync::atomic::Ordering::Relaxed) + chunks;
            let rate = total as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{total} chunks embedded, {rate:.1} chunks/s"));
        }
        Progress::Document { done, outcome } => {
            bar.set_position(done as u64);
            if let DocumentOutcome::Failed { source, reason } = outcome {
                bar.println(format!("failed: {source}: {reason}"));
            }
        }
    }
}

/// The scratch store of a corpus for the configured embedder: one per
/// embedder, since a store holds one embedder's vectors.
pub(crate) fn scratch_name(settings: &Settings, corpus: &std::path::Path) -> String {
    let name = dir_name(corpus);
    if settings.embedder.model == crate::ops::models::DEFAULT_EMBEDDER {
        name
    } else {
        format!("{name}-{}", settings.embedder.model)
    }
}

/// The last component of a folder's path, for naming its scratch store.
pub(crate) fn dir_name(path: &std::path::Path) -> String {
    path.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "corpus".into())
}

pub(crate) fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} documents {msg} [{elapsed_precise}, ETA {eta}]",
        )
        .expect("valid template"),
    );
    bar
}

pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}
