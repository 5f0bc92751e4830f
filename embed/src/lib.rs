//! Sentence embeddings on CPU:
//!
//! - all-MiniLM-L6-v2 on two runtimes: [`OrtEmbedder`], ONNX Runtime (the
//!   default: 3x candle's passages/s on the handbook's chunks, `rag bench
//!   ingest --peer`, BENCHMARKS.md), and [`BertEmbedder`], candle's BERT, no
//!   native library needed;
//! - nomic-embed-text-v1.5 on candle ([`NomicEmbedder`]), read from its GGUF.
//!
//! All do mean pooling over the attention mask, then L2 normalisation, as
//! sentence-transformers does for these models.

mod nomic;
mod onnx;

pub use nomic::NomicEmbedder;
pub use onnx::OrtEmbedder;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use rag_core::{BoxError, Embedder, Error, Result};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Why an embedder could not be loaded or run. Every variant keeps the
/// error that caused it.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a model config", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the tokenizer")]
    Tokenizer(#[source] BoxError),
    #[error("the model (candle)")]
    Candle(#[from] candle_core::Error),
    #[error("ONNX Runtime")]
    Ort(#[source] BoxError),
}

impl EmbedError {
    pub(crate) fn ort(e: impl std::fmt::Display) -> Self {
        EmbedError::Ort(e.to_string().into())
    }
}

impl From<EmbedError> for Error {
    fn from(e: EmbedError) -> Self {
        Error::internal("embedding failed").with_source(e)
    }
}

/// Reads a model's `config.json`.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> std::result::Result<T, EmbedError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| EmbedError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| EmbedError::Config { path, source })
}

/// Longest input the model was trained with; longer text is truncated.
const MAX_TOKENS: usize = 256;
/// Passages per forward pass. Batches are sorted by length first so that
/// little compute goes to padding.
pub(crate) const BATCH: usize = 16;

pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    model_id: String,
}

impl BertEmbedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> std::result::Result<Self, EmbedError> {
        let device = Device::Cpu;
        let config: Config = read_config(dir)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
        let model = BertModel::load(vb, &config)?;
        let model_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bert".into());
        Ok(Self {
            model,
            tokenizer,
            device,
            dimension: config.hidden_size,
            model_id,
        })
    }

    /// The tokenizer the model reads with; chunk sizes are counted in it.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn embed_batch(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let (ids, mask) = batch_tensors(&self.tokenizer, texts, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        // Mean over the real tokens only.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let normalised = mean.broadcast_div(&norm)?;
        Ok(normalised.to_vec2()?)
    }
}

pub(crate) fn load_tokenizer(path: &Path) -> std::result::Result<Tokenizer, EmbedError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(EmbedError::Tokenizer)?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            ..Default::default()
        }))
        .map_err(EmbedError::Tokenizer)?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

impl Embedder for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        sorted_batches(texts, BATCH, |batch| Ok(self.embed_batch(batch)?))
    }
}

/// A batch's token ids and attention mask, `(texts, longest)`, for candle.
pub(crate) fn batch_tensors(
    tokenizer: &Tokenizer,
    texts: &[&str],
    device: &Device,
) -> std::result::Result<(Tensor, Tensor), EmbedError> {
    let encodings = encode_padded(tokenizer, texts)?;
    let rows = |row: fn(&tokenizers::Encoding) -> &[u32]| {
        let rows = encodings
            .iter()
            .map(|e| Tensor::new(row(e), device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    };
    Ok((rows(|e| e.get_ids())?, rows(|e| e.get_attention_mask())?))
}

/// Tokenizes a batch, padded to its longest text.
pub(crate) fn encode_padded(
    tokenizer: &Tokenizer,
    texts: &[&str],
) -> std::result::Result<Vec<tokenizers::Encoding>, EmbedError> {
    let mut tokenizer = tokenizer.clone();
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(EmbedError::Tokenizer)
}

/// Runs `embed` over batches of texts of similar length (little padding),
/// and returns the vectors in the caller's order.
pub(crate) fn sorted_batches(
    texts: &[&str],
    size: usize,
    mut embed: impl FnMut(&[&str]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out = vec![Vec::new(); texts.len()];
    for batch in order.chunks(size) {
        let batch_texts: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
        let vectors = embed(&batch_texts)?;
        if vectors.len() != batch.len() {
            return Err(Error::internal(
                "the embedder returned the wrong number of vectors",
            ));
        }
        for (&i, v) in batch.iter().zip(vectors) {
            out[i] = v;
        }
    }
    Ok(out)
}
