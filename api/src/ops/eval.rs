//! `rag eval retrieval`: BEIR-format datasets through the real ingest and
//! retrieval path, scored as BEIR scores them.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rag_core::{SearchFilter, SearchMode};
use rag_ingest::Input;
use rag_retriever::metrics::{self, Qrels};
use serde::{Deserialize, Serialize};

use crate::app::App;

/// The collection a BEIR corpus is ingested into.
pub const COLLECTION: &str = "beir";
/// Documents ranked per query: recall@100 needs 100.
const DEPTH: usize = 100;

pub struct Beir {
    pub corpus: Vec<Input>,
    /// Query id to text, only for the queries judged in the split.
    pub queries: BTreeMap<String, String>,
    pub qrels: HashMap<String, Qrels>,
}

#[derive(Deserialize)]
struct CorpusLine {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

fn jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Reads `corpus.jsonl`, `queries.jsonl` and `qrels/SPLIT.tsv`.
pub fn load(dir: &Path, split: &str) -> anyhow::Result<Beir> {
    let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
    anyhow::ensure!(
        qrels_path.exists(),
        "{} does not exist: a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/{split}.tsv",
        qrels_path.display()
    );
    let mut qrels: HashMap<String, Qrels> = HashMap::new();
    let text = std::fs::read_to_string(&qrels_path)?;
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        if i == 0 && fields.first().is_some_and(|f| f.starts_with("query")) {
            continue; // header
        }
        let [query, doc, score] = fields[..] else {
            anyhow::bail!(
                "{} line {}: expected query-id, corpus-id and score separated by tabs",
                qrels_path.display(),
                i + 1
            );
        };
        let score: i32 = score
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: score", qrels_path.display(), i + 1))?;
        qrels
            .entry(query.to_string())
            .or_default()
            .insert(doc.to_string(), score);
    }
    let queries: BTreeMap<String, String> = jsonl::<QueryLine>(&dir.join("queries.jsonl"))?
        .into_iter()
        .filter(|q| qrels.contains_key(&q.id))
        .map(|q| (q.id, q.text))
        .collect();
    let missing = qrels.keys().filter(|q| !queries.contains_key(*q)).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} judged queries are not in queries.jsonl"
    );
    let corpus = jsonl::<CorpusLine>(&dir.join("corpus.jsonl"))?
        .into_iter()
        .map(|d| Input::Text {
            source: d.id,
            title: d.title,
            body: d.text,
        })
        .collect();
    Ok(Beir {
        corpus,
        queries,
        qrels,
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    /// Mean time per query: embed, search and fetch.
    pub ms_per_query: f64,
}

/// Runs every judged query in `mode` and averages the metrics over them.
pub async fn score(app: &App, beir: &Beir, mode: SearchMode) -> anyhow::Result<Scores> {
    let mut options = app.retrieve_options(&crate::app::Query {
        // Chunks, not documents: documents of several chunks take several
        // places, so ask for enough chunks to fill DEPTH documents.
        k: Some(DEPTH * 2),
        mode: Some(mode),
        filter: SearchFilter {
            collection: Some(COLLECTION.into()),
            ..Default::default()
        },
        sampling: Default::default(),
    });
    // Ranking documents, not showing passages: no neighbour text needed.
    options.expand_neighbours = false;
    options.continue_best = 0;
    let mut total = Scores::default();
    let started = Instant::now();
    for (id, text) in &beir.queries {
        let hits = app.retriever.retrieve_with(text, &options).await?;
        let ranked = metrics::documents_in_order(hits.iter().map(|h| h.source.as_str()));
        let ranked: Vec<&str> = ranked
            .into_iter()
            // BEIR leaves out a document that is the query itself.
            .filter(|d| *d != id.as_str())
            .take(DEPTH)
            .collect();
        let qrels = &beir.qrels[id];
        total.ndcg_at_10 += metrics::ndcg_at(&ranked, qrels, 10);
        total.recall_at_10 += metrics::recall_at(&ranked, qrels, 10);
        total.recall_at_100 += metrics::recall_at(&ranked, qrels, 100);
        total.mrr_at_10 += metrics::mrr_at(&ranked, qrels, 10);
    }
    let n = beir.queries.len().max(1) as f64;
    Ok(Scores {
        ndcg_at_10: total.ndcg_at_10 / n,
        recall_at_10: total.recall_at_10 / n,
        recall_at_100: total.recall_at_100 / n,
        mrr_at_10: total.mrr_at_10 / n,
        ms_per_query: started.elapsed().as_secs_f64() * 1000.0 / n,
    })
}
