//! nomic-embed-text-v1.5 on candle, read straight from its GGUF file.
//!
//! The only packaged copy of the model is llama.cpp's F16 GGUF (MODELS.md),
//! so the weights are read from it and renamed to what candle's
//! `nomic_bert` expects, and the WordPiece tokenizer (BERT, uncased) is
//! built from the vocabulary stored inside it. The model was trained with
//! an instruction per side: passages are embedded after `search_document: `
//! and questions after `search_query: `.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::nomic_bert::{Config, NomicBertModel};
use rag_core::{Embedder, Result};
use tokenizers::{Tokenizer, TruncationParams};

use crate::{BATCH, EmbedError, batch_tensors, sorted_batches};

const DOCUMENT_PREFIX: &str = "search_document: ";
const QUERY_PREFIX: &str = "search_query: ";
/// Longest input embedded (prefix included); the model reads up to 8,192
/// tokens, but chunks are far shorter and attention grows with the square.
const MAX_TOKENS: usize = 512;
/// `tokenizer.ggml.token_type` of a control token.
const CONTROL: i32 = 3;
/// The architecture's name in the GGUF metadata keys.
const ARCH: &str = "nomic-bert";

pub struct NomicEmbedder {
    model: NomicBertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
}

impl NomicEmbedder {
    /// Loads the model and its tokenizer from a nomic-bert GGUF file.
    pub fn load(path: &Path) -> std::result::Result<Self, EmbedError> {
        let device = Device::Cpu;
        let read_err = |source| EmbedError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let content = gguf_file::Content::read(&mut file)?;
        let meta = |key: &str| content.metadata.get(&format!("{ARCH}.{key}"));
        let mut config = Config::default();
        if let Some(v) = meta("block_count") {
            config.n_layer = v.to_u32()? as usize;
        }
        if let Some(v) = meta("embedding_length") {
            config.n_embd = v.to_u32()? as usize;
        }
        if let Some(v) = meta("feed_forward_length") {
            config.n_inner = v.to_u32()? as usize;
        }
        if let Some(v) = meta("attention.head_count") {
            config.n_head = v.to_u32()? as usize;
        }
        if let Some(v) = meta("attention.layer_norm_epsilon") {
            config.layer_norm_epsilon = v.to_f32()? as f64;
        }
        if let Some(v) = meta("rope.freq_base") {
            config.rotary_emb_base = v.to_f32()? as f64;
        }
        // The rotary tables are built for this many positions.
        config.n_positions = MAX_TOKENS;

        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let Some(renamed) = candle_name(name) else {
                continue;
            };
            let tensor = content
                .tensor(&mut file, name, &device)?
                .dequantize(&device)?;
            tensors.insert(renamed, tensor);
        }
        if let Some(words) = tensors.get("embeddings.word_embeddings.weight") {
            config.vocab_size = words.dim(0)?;
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = NomicBertModel::load(vb, &config)?;
        let tokenizer = wordpiece(&content)?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dimension: config.n_embd,
        })
    }

    /// The tokenizer the model reads with; chunk sizes are counted in it.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn embed_batch(
        &self,
        prefix: &str,
        texts: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let prefixed: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        let (ids, mask) = batch_tensors(&self.tokenizer, &refs, &self.device)?;
        let hidden = self.model.forward(&ids, None, Some(&mask))?;
        let pooled = candle_transformers::models::nomic_bert::mean_pooling(&hidden, &mask)?;
        let normalised = candle_transformers::models::nomic_bert::l2_normalize(&pooled)?;
        Ok(normalised.to_vec2()?)
    }
}

/// The name candle's `nomic_bert` gives a GGUF tensor (llama.cpp's
/// converter renamed them); `None` for tensors the model does not use.
fn candle_name(gguf: &str) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    let renamed = match stem {
        "token_embd" => "embeddings.word_embeddings".to_string(),
        "token_types" => "embeddings.token_type_embeddings".to_string(),
        "token_embd_norm" => "emb_ln".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let part = match part {
                "attn_qkv" => "attn.Wqkv",
                "attn_output" => "attn.out_proj",
                "attn_output_norm" => "norm1",
                "ffn_up" => "mlp.fc11",
                "ffn_gate" => "mlp.fc12",
                "ffn_down" => "mlp.fc2",
                "layer_output_norm" => "norm2",
                _ => return None,
            };
            format!("encoder.layers.{layer}.{part}")
        }
    };
    Some(format!("{renamed}.{kind}"))
}

/// BERT's uncased WordPiece tokenizer over the vocabulary in the GGUF.
/// Built here rather than shipped: no package carries the model's
/// `tokenizer.json`.
fn wordpiece(content: &gguf_file::Content) -> std::result::Result<Tokenizer, EmbedError> {
    let tokens = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .ok_or_else(|| EmbedError::Tokenizer("the GGUF has no tokenizer.ggml.tokens".into()))?
        .to_vec()?;
    let kinds = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .map(|v| v.to_vec())
        .transpose()?;
    // llama.cpp's converter marks a word's first piece with a leading "▁"
    // and drops the "##" of the pieces that continue one; put WordPiece's
    // spelling back. Control tokens ([CLS], [SEP], ...) stay as they are.
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let token = token.to_string()?;
        let control = kinds
            .and_then(|k| k.get(id))
            .is_some_and(|k| k.to_i32().is_ok_and(|k| k == CONTROL));
        let spelled = match token.strip_prefix('\u{2581}') {
            _ if control => token.clone(),
            Some(first) => first.to_string(),
            None => format!("##{token}"),
        };
        vocab.insert(spelled, id.into());
    }
    let id = |token: &str| {
        vocab
            .get(token)
            .and_then(|id| id.as_u64())
            .ok_or_else(|| EmbedError::Tokenizer(format!("the vocabulary has no {token}").into()))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    id("[UNK]")?;
    // As a `tokenizer.json` (the builders want the crate's own hash map
    // type): clean text, Chinese characters apart, strip accents, lower
    // case; split on spaces and punctuation; `[CLS] ... [SEP]`.
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null,
                       "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", sep],
                           "cls": ["[CLS]", cls]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
                  "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    let mut tokenizer: Tokenizer = json.to_string().parse().map_err(EmbedError::Tokenizer)?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            ..Default::default()
        }))
        .map_err(EmbedError::Tokenizer)?;
    Ok(tokenizer)
}

impl Embedder for NomicEmbedder {
    fn model_id(&self) -> &str {
        "nomic-embed-text-v1.5"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        sorted_batches(texts, BATCH, |batch| {
            Ok(self.embed_batch(DOCUMENT_PREFIX, batch)?)
        })
    }

    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        sorted_batches(texts, BATCH, |batch| {
            Ok(self.embed_batch(QUERY_PREFIX, batch)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_candles() {
        assert_eq!(
            candle_name("blk.11.ffn_gate.weight").as_deref(),
            Some("encoder.layers.11.mlp.fc12.weight")
        );
        assert_eq!(
            candle_name("token_embd_norm.bias").as_deref(),
            Some("emb_ln.bias")
        );
        assert_eq!(
            candle_name("blk.0.attn_qkv.weight").as_deref(),
            Some("encoder.layers.0.attn.Wqkv.weight")
        );
        assert_eq!(candle_name("blk.0.unknown.weight"), None);
        assert_eq!(candle_name("output.weight"), None);
    }
}
