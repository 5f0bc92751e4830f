//! `rag retrieve` and `rag ask`.
use std::process::ExitCode;

use rag_core::{SearchFilter, SearchMode};

use super::one_line;
use crate::app::{App, Query};
use crate::config::Settings;

#[derive(clap::Args)]
pub struct QueryArgs {
    /// dense, sparse or hybrid; default: `retrieval.mode` of the settings.
    #[arg(long)]
    pub mode: Option<SearchMode>,
    /// Only this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Only passages with this tag (repeat for any of several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Search as a caller in this access group (repeatable); without it the
    /// local CLI sees every group.
    #[arg(long = "group")]
    pub groups: Vec<String>,
}

impl QueryArgs {
    pub fn into_query(self, k: Option<usize>) -> Query {
        Query {
            k,
            mode: self.mode,
            filter: SearchFilter {
                collection: self.collection,
                tags: self.tags,
                groups: (!self.groups.is_empty()).then_some(self.groups),
            },
            sampling: Default::default(),
        }
    }
}

/// A question and how to search for it: `rag retrieve` and `rag ask`.
#[derive(clap::Args)]
pub struct QuestionArgs {
    pub question: String,
    #[arg(long)]
    pub k: Option<usize>,
    #[command(flatten)]
    pub query: QueryArgs,
    #[arg(long)]
    pub json: bool,
}

pub async fn retrieve(settings: Settings, args: QuestionArgs) -> anyhow::Result<ExitCode> {
    let app = App::open(settings).await?;
    let hits = app
        .retrieve(&args.question, &args.query.into_query(args.k))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
    } else {
        for h in &hits {
            println!(
                "{}. [{:.3}] {} ({})\n   {}\n",
                h.rank,
                h.score,
                h.title,
                h.source,
                one_line(&h.text, 200)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ask(settings: Settings, args: QuestionArgs) -> anyhow::Result<ExitCode> {
    let app = App::open(settings).await?;
    let answer = app
        .ask(&args.question, &args.query.into_query(args.k))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}\n", answer.answer);
        if !answer.citations.is_empty() {
            println!("Sources:");
            for c in &answer.citations {
                let page = c.page.map(|p| format!(", page {p}")).unwrap_or_default();
                println!(
                    "  [{}] {} ({}{page})\n      \"{}\"",
                    c.n,
                    c.title,
                    c.source,
                    one_line(&c.quote, 160)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
