//! `rag sources` and `rag sync`.
use std::process::ExitCode;

use clap::Subcommand;
use rag_core::SourceRecord;
use rag_ingest::sources::{GitConfig, SourceConfig, SyncReport, WebConfig};

#[cfg(feature = "kube")]
use super::cluster::resync_lease;
#[cfg(not(feature = "kube"))]
use super::documents::resync_lease;
use super::{ingest_progress, progress_bar};
use crate::app::App;
use crate::config::Settings;

#[derive(clap::Args)]
pub struct SourcesArgs {
    #[command(subcommand)]
    pub command: SourcesCommand,
}

#[derive(Subcommand)]
pub enum SourcesCommand {
    /// Add a source: a Git repository (--git) or a web site (--web). `rag
    /// sync NAME` brings its documents in.
    Add(Box<AddArgs>),
    /// The sources, with their document counts and last sync.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a source and every document it brought.
    Remove { name: String },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["git", "web"])))]
pub struct AddArgs {
    /// Names the source in `rag sync NAME` and in its documents' `origin`.
    pub name: String,
    /// A Git repository: a path, https://, ssh:// or host:path (cloned with
    /// your git, so its credentials apply).
    #[arg(long)]
    pub git: Option<String>,
    /// The branch (default: the repository's default branch).
    #[arg(long, requires = "git")]
    pub branch: Option<String>,
    /// Only files under this folder of the repository.
    #[arg(long, requires = "git")]
    pub path: Option<String>,
    /// Each document's web address; `{path}` is its path in the repository,
    /// e.g. https://git.example/wiki/blob/main/{path}.
    #[arg(long, requires = "git")]
    pub url_template: Option<String>,
    /// A web site: the first page to crawl, or a sitemap (.xml).
    #[arg(long)]
    pub web: Option<String>,
    /// Only pages whose URL starts with this (default: the start page's folder).
    #[arg(long, requires = "web")]
    pub prefix: Option<String>,
    /// At most this many pages per sync [default: 1000].
    #[arg(long, requires = "web")]
    pub max_pages: Option<usize>,
    /// Milliseconds between two requests; robots.txt may ask for more
    /// [default: 250].
    #[arg(long, requires = "web")]
    pub delay_ms: Option<u64>,
    /// A network the source may reach although sources may not by default
    /// (loopback, link-local such as cloud metadata, unspecified), as
    /// CIDR: 127.0.0.0/8 (repeatable).
    #[arg(long = "allow-network")]
    pub allow_networks: Vec<String>,
    #[arg(long, default_value = "default")]
    pub collection: String,
    /// Restrict the source's documents to an access group (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Tag every document of the source (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The sources to sync (default: all of them).
    pub names: Vec<String>,
    /// Print a JSON array: one object per source with its counts.
    #[arg(long)]
    pub json: bool,
    /// Run only while holding this Kubernetes Lease (the re-sync Lease):
    /// of syncs started together, one runs and the others exit 0 at once.
    #[arg(long)]
    pub lease: Option<String>,
    /// Delete what the sources no longer hold even when it is more than
    /// `sources.max_delete_fraction` of a source's documents.
    #[arg(long)]
    pub force: bool,
}

pub async fn sources(settings: Settings, args: SourcesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SourcesCommand::Add(args) => add(settings, *args).await,
        SourcesCommand::List { json } => list(settings, json).await,
        SourcesCommand::Remove { name } => remove(settings, &name).await,
    }
}

async fn add(settings: Settings, args: AddArgs) -> anyhow::Result<ExitCode> {
    rag_ingest::sources::validate_name(&args.name)?;
    let config = match (args.git, args.web) {
        (Some(url), None) => SourceConfig::Git(GitConfig {
            url,
            branch: args.branch,
            path: args.path,
            url_template: args.url_template,
            allow_networks: args.allow_networks.clone(),
        }),
        (None, Some(start_url)) => SourceConfig::Web(WebConfig {
            start_url,
            prefix: args.prefix,
            max_pages: args.max_pages.unwrap_or(1000),
            delay_ms: args.delay_ms.unwrap_or(250),
            allow_networks: args.allow_networks,
        }),
        _ => anyhow::bail!("give one of --git URL or --web START_URL"),
    };
    config.validate()?;
    config.check_host_allowed(&settings.sources.allowed_hosts)?;
    let app = App::open(settings).await?;
    app.docs
        .add_source(&SourceRecord {
            name: args.name.clone(),
            kind: config.kind().into(),
            config: config.to_json(),
            collection: args.collection,
            tags: args.tags,
            groups: args.groups,
            state: String::new(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            synced_at: None,
        })
        .await?;
    println!(
        "added {} source {:?} ({}); `rag sync {}` brings its documents in",
        config.kind(),
        args.name,
        config.location(),
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(settings: Settings, json: bool) -> anyhow::Result<ExitCode> {
    let app = App::open(settings).await?;
    let mut rows = Vec::new();
    for record in app.docs.sources().await? {
        let documents = app.docs.documents_of_origin(&record.name).await?.len();
        let config = SourceConfig::of(&record)
            .map(|c| c.shown())
            .unwrap_or(serde_json::Value::Null);
        rows.push((record, config, documents));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, config, documents)| {
                serde_json::json!({
                    "name": r.name,
                    "kind": r.kind,
                    "config": config,
                    "collection": r.collection,
                    "tags": r.tags,
                    "groups": r.groups,
                    "documents": documents,
                    "created_at": r.created_at,
                    "synced_at": r.synced_at,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no sources; `rag sources add NAME --git URL` or `--web URL` adds one");
    }
    for (r, _, documents) in &rows {
        let location = SourceConfig::of(r)
            .map(|c| c.location())
            .unwrap_or_default();
        let groups = if r.groups.is_empty() {
            String::new()
        } else {
            format!(" groups {}", r.groups.join(","))
        };
        println!(
            "{}\t{}\t{location}\tcollection {}{groups}\t{documents} documents\tlast sync {}",
            r.name,
            r.kind,
            r.collection,
            r.synced_at.as_deref().unwrap_or("never")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(settings: Settings, name: &str) -> anyhow::Result<ExitCode> {
    let cache = settings.data_dir.join("sources").join(name);
    let app = App::open(settings).await?;
    let ingestor = app.ingestor()?;
    let removed = rag_ingest::sources::remove(&ingestor, name, &cache).await?;
    println!("removed source {name:?} and its {removed} documents");
    Ok(ExitCode::SUCCESS)
}

pub async fn sync(settings: Settings, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let SyncArgs {
        names,
        json,
        lease,
        force,
    } = args;
    let lease = match lease {
        Some(name) => match resync_lease(&name).await? {
            Some(lock) => Some(lock),
            None => {
                eprintln!(
                    "the Lease {name} is held by another replica: its sync runs, not this one"
                );
                return Ok(ExitCode::SUCCESS);
            }
        },
        None => None,
    };
    let cache = settings.data_dir.join("sources");
    let app = App::open(settings).await?;
    let mut ingestor = app.ingestor()?;
    if force {
        ingestor.limits.max_delete_fraction = f64::INFINITY;
    }
    let all = app.docs.sources().await?;
    let chosen: Vec<SourceRecord> = if names.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for name in &names {
            match all.iter().find(|s| &s.name == name) {
                Some(s) => chosen.push(s.clone()),
                None => anyhow::bail!("no source named {name:?}; `rag sources list` shows them"),
            }
        }
        chosen
    };
    let work = async {
        let mut results: Vec<(String, Result<SyncReport, rag_core::Error>)> = Vec::new();
        for record in &chosen {
            let bar = progress_bar(0, json);
            bar.set_message(format!("syncing {}", record.name));
            let result = rag_ingest::sources::sync(
                &ingestor,
                record,
                &cache.join(&record.name),
                &app.settings.sources.allowed_hosts,
                &ingest_progress(bar.clone()),
            )
            .await;
            bar.finish_and_clear();
            results.push((record.name.clone(), result));
        }
        results
    };
    let results = match &lease {
        // Stopping mid-way is safe: the next sync starts from the last
        // completed one's state, and what this one committed reads as
        // unchanged.
        Some(lock) => tokio::select! {
            results = work => results,
            lost = lock.hold() => return Err(lost),
        },
        None => work.await,
    };
    if let Some(lock) = &lease {
        lock.release().await?;
    }
    let (mut errors, mut failed) = (0, 0);
    let mut out = Vec::new();
    for (name, result) in &results {
        match result {
            Ok(report) => {
                failed += report.failed;
                if json {
                    out.push(serde_json::to_value(report)?);
                } else {
                    println!(
                        "{name}: {} added, {} updated, {} unchanged, {} deleted ({} no longer \
                         open to the crawl), {} failed in {:.1}s",
                        report.added,
                        report.updated,
                        report.unchanged,
                        report.deleted,
                        report.forbidden,
                        report.failed,
                        report.seconds
                    );
                    for f in &report.failures {
                        println!("failed {}: {}", f.document, f.reason);
                    }
                }
            }
            Err(e) => {
                errors += 1;
                // Errors of a store are internal; the rest say what to fix.
                let message = e.to_string();
                tracing::debug!(source = %name, error = %e.chain(), "sync failed");
                if json {
                    out.push(serde_json::json!({ "source": name, "error": message }));
                } else {
                    eprintln!("{name}: {message}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if results.is_empty() {
        println!("no sources; `rag sources add NAME --git URL` or `--web URL` adds one");
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
