//! `rag ingest` and `rag delete`.
use std::path::PathBuf;
use std::process::ExitCode;

use rag_ingest::{DocumentOutcome, IngestOptions};

#[cfg(feature = "kube")]
use super::cluster::resync_lease;
use super::{ingest_progress, progress_bar};
use crate::app::App;
use crate::config::Settings;

#[derive(clap::Args)]
pub struct IngestArgs {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, default_value = "default")]
    pub collection: String,
    /// Tag every document (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Restrict the documents to an access group (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Also delete the collection's documents that are not among these
    /// files (pages removed from the wiki).
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
    /// Run only while holding this Kubernetes Lease (in the pod's
    /// namespace): of re-syncs started together, one runs and the
    /// others exit 0 at once. Renewed while the ingest runs, released
    /// at its end.
    #[arg(long)]
    pub lease: Option<String>,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub documents: Vec<String>,
    #[arg(long, default_value = "default")]
    pub collection: String,
}

pub async fn ingest(settings: Settings, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let IngestArgs {
        paths,
        collection,
        tags,
        groups,
        prune,
        json,
        lease,
    } = args;
    let files = rag_ingest::collect_files(&paths)?;
    let lease = match lease {
        Some(name) => match resync_lease(&name).await? {
            Some(lock) => Some(lock),
            None => {
                eprintln!(
                    "the Lease {name} is held by another replica: its re-sync runs, not this one"
                );
                return Ok(ExitCode::SUCCESS);
            }
        },
        None => None,
    };
    let app = App::open(settings).await?;
    let ingestor = app.ingestor()?;
    let options = IngestOptions {
        collection,
        tags,
        groups,
        writer_groups: None,
        origin: None,
    };
    let bar = progress_bar(files.len() as u64, json);
    let work = async {
        let mut report = ingestor
            .ingest(&files, &options, &ingest_progress(bar.clone()))
            .await?;
        if prune {
            let keep = files.iter().map(|(_, source)| source.as_str()).collect();
            report.pruned = ingestor.prune(&options.collection, &keep).await?;
        }
        anyhow::Ok(report)
    };
    let report = match &lease {
        // Stopping mid-way is safe: the next run repairs and resumes.
        Some(lock) => tokio::select! {
            report = work => report,
            lost = lock.hold() => return Err(lost),
        },
        None => work.await,
    };
    if let Some(lock) = &lease {
        lock.release().await?;
    }
    let report = report?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} documents: {} added, {} updated, {} unchanged, {} skipped, {} failed; {} chunks ({} embedded) in {:.1}s",
            report.documents,
            report.added,
            report.updated,
            report.unchanged,
            report.skipped,
            report.failed,
            report.chunks,
            report.embedded_chunks,
            report.seconds
        );
        for o in &report.outcomes {
            match o {
                DocumentOutcome::Skipped { source, reason } => {
                    println!("skipped {source}: {reason}")
                }
                DocumentOutcome::Failed { source, reason } => {
                    println!("failed {source}: {reason}")
                }
                _ => {}
            }
        }
        for source in &report.pruned {
            println!("pruned {source}: no longer in the folder");
        }
    }
    Ok(if report.failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn delete(settings: Settings, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let DeleteArgs {
        documents,
        collection,
    } = args;
    let app = App::open(settings).await?;
    let ingestor = app.ingestor()?;
    let mut missing = Vec::new();
    for name in &documents {
        // A source names every document of that name in the
        // collection (one per owner scope).
        let mut docs = app.docs.documents_by_source(&collection, name).await?;
        if docs.is_empty() {
            docs.extend(app.docs.document(name).await?);
        }
        if docs.is_empty() {
            missing.push(name.as_str());
        }
        for doc in docs {
            ingestor.delete(&doc.id).await?;
            println!("deleted {} ({} chunks)", doc.source, doc.chunk_count);
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "no document {} in collection {collection:?} (give a source as ingest named it, or a document id)",
        missing.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Without the Kubernetes client there is no Lease to take.
#[cfg(not(feature = "kube"))]
pub(super) async fn resync_lease(_name: &str) -> anyhow::Result<Option<NoLease>> {
    anyhow::bail!("--lease needs a `rag` built with the `kube` feature (on by default)")
}

#[cfg(not(feature = "kube"))]
pub(super) enum NoLease {}

#[cfg(not(feature = "kube"))]
impl NoLease {
    pub(super) async fn hold(&self) -> anyhow::Error {
        match *self {}
    }
    pub(super) async fn release(&self) -> anyhow::Result<()> {
        match *self {}
    }
}
