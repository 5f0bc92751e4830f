//! Both runtimes on the real model: the same vectors, and vectors that mean
//! something; nomic-embed-text-v1.5 on its own. Needs `rag models fetch`
//! and `rag models fetch nomic-embed-text-v1.5` (scripts/test.sh runs both).

use std::path::PathBuf;

use rag_core::Embedder;
use rag_embed::{BertEmbedder, NomicEmbedder, OrtEmbedder};

fn models_dir() -> PathBuf {
    std::env::var_os("RAG_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn onnx_and_candle_agree_and_rank_by_meaning() {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.onnx").exists(),
        "run `rag models fetch` first ({} is empty)",
        dir.display()
    );
    let candle = BertEmbedder::load(&dir).unwrap();
    let onnx =
        OrtEmbedder::load(&dir, &models_dir().join("onnxruntime/libonnxruntime.so"), 2).unwrap();
    let texts = [
        "How do I deploy on Kubernetes?",
        "Kubernetes deployment guide",
        "banana bread recipe",
        // Longer than the model's 256-token window: truncated the same way.
        &"The travel policy applies to every trip. ".repeat(60),
    ];
    let a = candle.embed(&texts).unwrap();
    let b = onnx.embed(&texts).unwrap();
    assert_eq!((a.len(), b.len()), (4, 4));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), 384);
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "runtimes differ by {worst}");
        assert!((cos(x, x) - 1.0).abs() < 1e-4, "not normalised");
    }
    for v in [&a, &b] {
        assert!(cos(&v[0], &v[1]) > 0.8, "{}", cos(&v[0], &v[1]));
        assert!(cos(&v[0], &v[2]) < 0.2, "{}", cos(&v[0], &v[2]));
    }
    // Batching and order do not change a text's vector.
    let single = onnx.embed(&[texts[2]]).unwrap();
    assert!(cos(&single[0], &b[2]) > 0.9999);
}

#[test]
fn nomic_reads_its_gguf_and_ranks_by_meaning_with_its_prefixes() {
    let path = models_dir().join("nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf");
    assert!(
        path.exists(),
        "run `rag models fetch nomic-embed-text-v1.5` first ({} is missing)",
        path.display()
    );
    let nomic = NomicEmbedder::load(&path).unwrap();
    assert_eq!(nomic.dimension(), 768);
    // BERT's uncased WordPiece, built from the vocabulary in the GGUF.
    let ids = nomic
        .tokenizer()
        .encode("Hello, World! Unaffordable", true)
        .unwrap();
    assert_eq!(ids.get_tokens()[..4], ["[CLS]", "hello", ",", "world"]);
    assert_eq!(ids.get_ids()[..2], [101, 7592]);
    assert_eq!(ids.get_tokens().last().map(String::as_str), Some("[SEP]"));
    assert!(
        ids.get_tokens().iter().any(|t| t.starts_with("##")),
        "{:?}",
        ids.get_tokens()
    );

    let question = nomic
        .embed_queries(&["What is the capital of France?"])
        .unwrap();
    let passages = [
        "Paris is the capital and largest city of France.",
        "Berlin is the capital and largest city of Germany.",
        "Mitochondria are the powerhouse of the cell.",
        // Longer than the 512 tokens embedded: truncated, still a vector.
        &"The travel policy applies to every trip. ".repeat(200),
    ];
    let vectors = nomic.embed(&passages).unwrap();
    for v in &vectors {
        assert_eq!(v.len(), 768);
        assert!((cos(v, v) - 1.0).abs() < 1e-4, "not normalised");
    }
    let scores: Vec<f32> = vectors.iter().map(|v| cos(&question[0], v)).collect();
    // The figure an independent forward pass of the same GGUF gave for this
    // pair (../shared/MODELS.md): a wrong rotary base, norm or tensor name
    // moves it.
    assert!((scores[0] - 0.872).abs() < 0.005, "{scores:?}");
    assert!(scores[0] > scores[1] + 0.05, "{scores:?}");
    assert!(scores[1] > scores[2] + 0.05, "{scores:?}");
    // The prefixes matter: a question embedded as a passage is another vector.
    let as_passage = nomic.embed(&["What is the capital of France?"]).unwrap();
    assert!(cos(&as_passage[0], &question[0]) < 0.99);
    // Batching and order do not change a text's vector.
    let single = nomic.embed(&[passages[2]]).unwrap();
    assert!(cos(&single[0], &vectors[2]) > 0.9999);
}
