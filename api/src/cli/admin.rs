//! `rag serve`, `rag keys` and `rag doctor`.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use rag_core::ConsistencyReport;

use crate::app::App;
use crate::config::Settings;
use crate::{http, keys};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Serve without API keys even beyond loopback: anyone who can reach
    /// the address can read, upload and delete.
    #[arg(long)]
    pub open: bool,
}

#[derive(clap::Args)]
pub struct McpArgs {
    /// See only documents of these groups (repeatable), as a key of them
    /// would; without it, every document, as the CLI does.
    #[arg(long = "group")]
    pub groups: Vec<String>,
}

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once, only its hash is kept.
    Create {
        #[arg(long)]
        name: String,
        /// reader (ask, retrieve, read), uploader (also upload and delete),
        /// admin (also every document whatever its groups).
        #[arg(long, default_value = "reader")]
        role: String,
        /// Access groups whose documents the key sees (repeat, or comma
        /// separated); `*` for every group.
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every key, revoked ones too (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; it stops working at once.
    Revoke { id: String },
}

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn mcp(settings: Settings, args: McpArgs) -> anyhow::Result<ExitCode> {
    let app = Arc::new(App::open(settings).await?);
    let mut caller = crate::keys::Caller::open();
    if !args.groups.is_empty() {
        caller.role = rag_core::KeyRole::Reader;
        caller.groups = Some(args.groups);
    }
    crate::mcp::serve_stdio(app, caller).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn serve(settings: Settings, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs { addr, open } = args;
    let app = Arc::new(App::open(settings).await?);
    let keys = app.docs.keys().await?;
    let live_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    let open = open || (addr.ip().is_loopback() && live_keys == 0);
    anyhow::ensure!(
        open || live_keys > 0,
        "serving on {addr} needs API keys and there are none: create one with `rag keys create --name NAME --role reader`, or pass --open to serve without keys (anyone who can reach {addr} could then read, upload and delete)"
    );
    if open {
        eprintln!("open mode: no API key needed (see `rag serve --help`)");
    } else {
        eprintln!("API keys required ({live_keys} active)");
    }
    // Load the model before taking traffic.
    app.generator().await?;
    tokio::spawn(forget_old_answers(app.clone()));
    http::serve(app, addr, open).await?;
    Ok(ExitCode::SUCCESS)
}

/// Forgets, now and hourly, the answers kept for feedback longer than
/// `feedback.retention_days`: questions are what people asked, and are
/// not kept for ever.
async fn forget_old_answers(app: Arc<crate::app::App>) {
    let keep = chrono::Duration::seconds((app.settings.feedback.retention_days * 86_400.0) as i64);
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let before = (chrono::Utc::now() - keep).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match app.docs.forget_answers_before(&before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(answers = n, %before, "answers past feedback.retention_days forgotten")
            }
            Err(e) => {
                tracing::warn!(error = %e.chain(), "forgetting old answers failed; retried in an hour")
            }
        }
    }
}

pub async fn keys(settings: Settings, args: KeysArgs) -> anyhow::Result<ExitCode> {
    let command = args.command;
    let app = App::open(settings).await?;
    match command {
        KeysCommand::Create {
            name,
            role,
            groups,
            json,
        } => {
            let role = rag_core::KeyRole::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("unknown role {role:?}; roles: reader, uploader, admin")
            })?;
            let groups: Vec<String> = groups
                .into_iter()
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            let (key, record) = keys::create(app.docs.as_ref(), &name, role, groups).await?;
            if json {
                let mut value = serde_json::to_value(&record)?;
                value["key"] = key.into();
                println!("{value}");
            } else {
                println!("{key}");
                eprintln!(
                    "key {} ({}, {}, groups: {}) created; it is shown only now",
                    record.id,
                    record.name,
                    record.role.as_str(),
                    if record.groups.is_empty() {
                        "none".to_string()
                    } else {
                        record.groups.join(", ")
                    }
                );
            }
        }
        KeysCommand::List { json } => {
            let keys = app.docs.keys().await?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                for k in keys {
                    println!(
                        "{}  {:<8}  {:<20}  groups: {:<20}  created {}{}",
                        k.id,
                        k.role.as_str(),
                        k.name,
                        k.groups.join(","),
                        k.created_at,
                        k.revoked_at
                            .map(|r| format!("  REVOKED {r}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let now = chrono::Utc::now().to_rfc3339();
            anyhow::ensure!(
                app.docs.revoke_key(&id, &now).await?,
                "no active key {id} (`rag keys list` shows them)"
            );
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ReembedArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn reembed(settings: Settings, args: ReembedArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let done = crate::ops::reembed::reembed(&settings, |r| {
        let rate = r.embedded as f64 / started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} documents, {} chunks embedded ({rate:.1}/s), {} kept from an earlier run",
            r.documents, r.embedded, r.kept
        );
    })
    .await?;
    eprintln!();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if let Some(report) = &done.report {
        println!(
            "re-embedded {} chunks of {} documents with {} ({}-d), was {} ({}-d); {} kept from an earlier run, {} stale points removed",
            report.embedded + report.kept,
            report.documents,
            done.to.model,
            done.to.dimension,
            done.from.model,
            done.from.dimension,
            report.kept,
            report.removed
        );
    } else {
        println!("the vectors are {}'s already: nothing to do", done.to.model);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn doctor(settings: Settings, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let DoctorArgs { json } = args;
    let app = App::open(settings).await?;
    let report = consistency(&app).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "documents {}, chunks {}, vectors {}, orphan vectors {}, missing vectors {}, duplicate chunks {}",
            report.documents,
            report.chunks,
            report.vectors,
            report.orphan_vectors,
            report.missing_vectors,
            report.duplicate_chunks
        );
    }
    Ok(if report.is_consistent() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Counts rows and vectors and what does not match between them.
async fn consistency(app: &App) -> anyhow::Result<ConsistencyReport> {
    use std::collections::{HashMap, HashSet};
    let rows = app.docs.chunk_ids().await?;
    let vectors = app.vectors.chunk_ids().await?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in rows.iter().chain(vectors.iter()) {
        *counts.entry(id).or_default() += 1;
    }
    let row_set: HashSet<&str> = rows.iter().map(String::as_str).collect();
    let vec_set: HashSet<&str> = vectors.iter().map(String::as_str).collect();
    let mut sorted: Vec<&str> = row_set.iter().copied().collect();
    sorted.sort_unstable();
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(sorted.join("\n")))
    };
    Ok(ConsistencyReport {
        documents: app.docs.document_count().await?,
        chunks: rows.len(),
        vectors: vectors.len(),
        orphan_vectors: vec_set.difference(&row_set).count(),
        missing_vectors: row_set.difference(&vec_set).count(),
        duplicate_chunks: (rows.len() - row_set.len()) + (vectors.len() - vec_set.len()),
        fingerprint,
    })
}
