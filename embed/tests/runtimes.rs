//! Both runtimes on the real model: the same vectors, and vectors that mean
//! something. Needs `rag models fetch` (scripts/test.sh runs it).

use std::path::PathBuf;

use rag_core::Embedder;
use rag_embed::{BertEmbedder, OrtEmbedder};

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
