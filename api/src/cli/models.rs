//! `rag models fetch|list`.
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{self, Settings};
use crate::ops::models;

#[derive(clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Install models into $RAG_MODELS_DIR (default ./models); a no-op for
    /// those already there. Without names: the configured embedder and generator.
    Fetch { names: Vec<String> },
    /// List the known models and whether they are installed.
    List,
}

pub fn models(settings: &Settings, args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let command = args.command;
    let dir = settings.models_dir.clone();
    match command {
        ModelsCommand::List => {
            for m in models::MODELS {
                let state = if m.is_installed(&dir) {
                    "installed"
                } else {
                    "not installed"
                };
                let kind = match m.kind {
                    models::Kind::Embedder => "embedder",
                    models::Kind::Generator => "generator",
                    models::Kind::Runtime => "runtime",
                };
                println!(
                    "{:<30} {:<10} {:<14} {}",
                    m.name, kind, state, m.description
                );
            }
        }
        ModelsCommand::Fetch { names } => {
            let names = if names.is_empty() {
                let mut names = vec![settings.embedder.model.clone()];
                if settings.embedder.runtime == config::EmbedderRuntime::Onnx
                    && !models::spec(&settings.embedder.model)?.is_gguf_embedder()
                {
                    names.push(models::ONNX_RUNTIME.to_string());
                }
                if let Some(candle) = settings.generator.candle() {
                    names.push(candle.model.clone());
                }
                names
            } else {
                names
            };
            for name in names {
                let spec = models::spec(&name)?;
                if spec.fetch(&dir)? {
                    println!(
                        "installed {} into {}",
                        spec.name,
                        dir.join(spec.dir).display()
                    );
                } else {
                    println!(
                        "{} is already installed in {}",
                        spec.name,
                        dir.join(spec.dir).display()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
