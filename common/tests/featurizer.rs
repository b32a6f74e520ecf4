//! Integration test of the prompt featurizer against sentence-transformers.
//!
//! `tests/fixtures/minilm/expected.json` holds all-MiniLM-L6-v2 embeddings computed by the real
//! sentence-transformers package (`make_expected.py` next to it records the versions). The
//! Rust [`Embedder`] must agree with them (cosine >= 0.999), return unit vectors, be
//! bit-for-bit deterministic, and [`Featurizer::featurize`] must produce rows of the documented
//! width. The model directory comes from `POLYLLM_MODELS_DIR` (else `<workspace>/models`); when
//! it is missing the test fails and says how to fetch it.
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use polyllm_common::features::{feature_names, text_features, Embedder, Featurizer, Pca, TEXT_FEATURE_NAMES};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    tokens_untruncated: usize,
    vector: Vec<f32>,
}

fn model_dir() -> PathBuf {
    let base = std::env::var_os("POLYLLM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    base.join("all-MiniLM-L6-v2")
}

fn embedder() -> Arc<Embedder> {
    static EMBEDDER: OnceLock<Arc<Embedder>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            let dir = model_dir();
            assert!(
                dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file(),
                "all-MiniLM-L6-v2 is missing at {}: run `target/debug/fetch-models --only minilm` \
                 (or point POLYLLM_MODELS_DIR at a directory holding all-MiniLM-L6-v2/)",
                dir.display()
            );
            Arc::new(Embedder::load(&dir).unwrap_or_else(|e| panic!("loading the embedder: {e}")))
        })
        .clone()
}

fn expected() -> Expected {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/expected.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run make_expected.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn matches_sentence_transformers() {
    let embedder = embedder();
    let expected = expected();
    assert!(expected.cases.len() >= 6);
    let mut worst = f32::INFINITY;
    for case in &expected.cases {
        let emb = embedder.embed(&case.text).unwrap_or_else(|e| panic!("{:?}: {e}", case.text));
        assert_eq!(emb.vector.len(), 384);
        assert_eq!(emb.vector.len(), case.vector.len());
        let cos = cosine(&emb.vector, &case.vector);
        let norm = emb.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        let short: String = case.text.chars().take(40).collect();
        eprintln!("cosine {cos:.7}  norm {norm:.7}  tokens {:>4}  {short:?}", emb.tokens);
        assert!(cos >= 0.999, "cosine {cos} < 0.999 for {short:?}");
        assert!((norm - 1.0).abs() <= 1e-4, "norm {norm} for {short:?}");
        assert_eq!(emb.tokens, case.tokens_untruncated, "token count of {short:?}");
        worst = worst.min(cos);
    }
    eprintln!("worst cosine {worst:.7}");
    // The fixture must exercise truncation.
    assert!(expected.cases.iter().any(|c| c.tokens_untruncated > 256));
    assert!(expected.cases.iter().any(|c| c.text.is_empty()));
}

#[test]
fn deterministic_bits() {
    let embedder = embedder();
    for text in ["Write a haiku about Rust.", "", "SELECT * FROM t WHERE x > 3;"] {
        let a = embedder.embed(text).expect("embed");
        let b = embedder.embed(text).expect("embed");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.vector), bits(&b.vector), "{text:?}");
        assert_eq!(a.tokens, b.tokens);
    }
}

#[test]
fn shared_across_threads() {
    let embedder = embedder();
    let reference = embedder.embed("threads share one embedder").expect("embed").vector;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let e = Arc::clone(&embedder);
            std::thread::spawn(move || e.embed("threads share one embedder").map(|x| x.vector))
        })
        .collect();
    for h in handles {
        let v = h.join().expect("thread").expect("embed");
        assert_eq!(v, reference);
    }
}

#[test]
fn featurize_row_shape() {
    let dir = model_dir();
    // Same preconditions (and failure message) as the other tests.
    let _ = embedder();
    let featurizer = Featurizer::new(Embedder::load(&dir).unwrap_or_else(|e| panic!("loading the embedder: {e}")));
    let prompts = [
        "What is 2+2?",
        "Explain the borrow checker.",
        "Write a Python script that sorts a CSV by date.",
        "Translate 'good morning' into Japanese.",
        "Prove that there are infinitely many primes.",
        "Summarize the plot of Hamlet in three sentences.",
    ];
    let rows: Vec<Vec<f32>> = prompts.iter().map(|p| featurizer.embedder().embed(p).expect("embed").vector).collect();
    let pca = Pca::fit(&rows, 4).expect("fit PCA");
    for p in prompts {
        let f = featurizer.featurize(p, &pca).expect("featurize");
        assert_eq!(f.names, feature_names(4));
        assert_eq!(f.names.len(), f.values.len());
        assert_eq!(f.values.len(), TEXT_FEATURE_NAMES.len() + pca.dims());
        assert_eq!(f.embedding.len(), 384);
        let tokens = featurizer.embedder().embed(p).expect("embed").tokens;
        assert_eq!(&f.values[..TEXT_FEATURE_NAMES.len()], &text_features(p, tokens)[..]);
        assert!(f.values.iter().all(|x| x.is_finite()));
    }
}
