//! all-MiniLM-L6-v2 run by ONNX Runtime.
//!
//! The graph (`model.onnx`, written by `scripts/bench/embed_peer.py` from the
//! same safetensors candle reads) already ends in mean pooling and L2
//! normalisation, so its output is the sentence vector.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor;
use rag_core::Embedder;
use tokenizers::Tokenizer;

use crate::{BATCH, EmbedError, encode_padded, load_tokenizer};

pub struct OrtEmbedder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    dimension: usize,
    model_id: String,
}

/// ONNX Runtime is loaded once per process.
static RUNTIME: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

impl OrtEmbedder {
    /// Loads `model.onnx`, `config.json` and `tokenizer.json` from `dir`,
    /// with the ONNX Runtime shared library at `runtime`.
    pub fn load(dir: &Path, runtime: &Path, threads: usize) -> Result<Self, EmbedError> {
        let env = RUNTIME
            .get_or_init(|| {
                ort::init_from(runtime)
                    .map_err(|e| format!("loading ONNX Runtime from {}: {e}", runtime.display()))?
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(EmbedError::ort)?;
        let config: serde_json::Value = crate::read_config(dir)?;
        let dimension = config["hidden_size"].as_u64().unwrap_or(384) as usize;
        let session = Session::builder(env)
            .map_err(EmbedError::ort)?
            .with_intra_threads(threads)
            .map_err(EmbedError::ort)?
            .commit_from_file(dir.join("model.onnx"))
            .map_err(EmbedError::ort)?;
        let model_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            session: Mutex::new(session),
            tokenizer: load_tokenizer(&dir.join("tokenizer.json"))?,
            dimension,
            model_id,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = encode_padded(&self.tokenizer, texts)?;
        let rows = encodings.len();
        let cols = encodings.first().map(|e| e.len()).unwrap_or(0);
        let ids: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&i| i as i64))
            .collect();
        let mask: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&i| i as i64))
            .collect();
        let types = vec![0i64; ids.len()];
        let shape = [rows, cols];
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let tensor = |data: Vec<i64>| Tensor::from_array((shape, data)).map_err(EmbedError::ort);
        let outputs = session
            .run(ort::inputs![
                "input_ids" => tensor(ids)?,
                "attention_mask" => tensor(mask)?,
                "token_type_ids" => tensor(types)?,
            ])
            .map_err(EmbedError::ort)?;
        let (_, data) = outputs["embedding"]
            .try_extract_tensor::<f32>()
            .map_err(EmbedError::ort)?;
        Ok(data.chunks(self.dimension).map(<[f32]>::to_vec).collect())
    }
}

impl Embedder for OrtEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        crate::sorted_batches(texts, BATCH, |batch| Ok(self.embed_batch(batch)?))
    }
}
