//! The local model computes what sentence-transformers computes: for the 100 texts of
//! tests/fixtures/parity_texts.py (chat turns, long paragraphs past the 256-token window,
//! non-English, emoji, texts empty after trimming), cosine >= 0.999 with the reference vectors
//! in tests/fixtures/parity_reference.json (made once by make_parity_reference.py with
//! sentence-transformers on PyTorch).

use memoriesdb_embedder::model::LocalModel;
use std::path::PathBuf;

/// The model setup.sh installs (MEMORIESDB_MODEL_DIR overrides).
pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("MEMORIESDB_MODEL_DIR").unwrap_or_else(|_| "/var/lib/memoriesdb/models/all-MiniLM-L6-v2".into()),
    );
    assert!(dir.join("model.safetensors").exists(), "{} has no model: run scripts/setup.sh --deps", dir.display());
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/parity_reference.json")).expect("the fixture is JSON");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "the fixture has {} texts", cases.len());
    let texts: Vec<&str> = cases.iter().map(|case| case["text"].as_str().unwrap()).collect();
    let reference: Vec<Vec<f32>> = cases
        .iter()
        .map(|case| case["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();

    // batches of 32 (what the embedder runs) and one text at a time give the same vectors, on
    // every core for each batch, or with batches in single-threaded passes side by side (and
    // the vectors come back in the texts' order either way)
    for (batch, passes) in [(32, 1), (32, 2), (1, 3)] {
        let model = LocalModel::load(&model_dir(), None, batch).unwrap().with_passes(passes).unwrap();
        assert_eq!((model.name.as_str(), model.dimensions, model.max_tokens), ("all-MiniLM-L6-v2", 384, 256));
        let vectors = model.embed(&texts).unwrap();
        let mut worst = (f64::MAX, "");
        for ((text, ours), theirs) in texts.iter().zip(&vectors).zip(&reference) {
            assert_eq!(ours.len(), 384);
            let similarity = cosine(ours, theirs);
            if similarity < worst.0 {
                worst = (similarity, text);
            }
            assert!(similarity >= 0.999, "batch {batch}, {passes} passes: cosine {similarity} for {text:?}");
            let norm = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm} for {text:?}");
        }
        eprintln!("batch {batch}, {passes} passes: worst cosine {:.9} for {:?}", worst.0, worst.1);
    }
}

#[test]
fn a_text_past_the_window_is_truncated_like_sentence_transformers() {
    let model = LocalModel::load(&model_dir(), None, 32).unwrap();
    let long = "the quick brown fox jumps over the lazy dog ".repeat(100);
    assert!(model.count_tokens(&long).unwrap() > 256);
    // whatever follows the first 254 word pieces cannot change the embedding
    let changed_tail = format!("{long} completely different words at the very end");
    let vectors = model.embed(&[&long, &changed_tail]).unwrap();
    assert!(cosine(&vectors[0], &vectors[1]) > 0.999_999);
}
