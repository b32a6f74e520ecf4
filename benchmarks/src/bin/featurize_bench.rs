//! Latency of the prompt featurizer (all-MiniLM-L6-v2 embedding + text features + PCA) on this
//! machine's CPU: for prompts of about 8, 32, 64 and 128 tokens, median and p90 of 50 runs of
//! `Featurizer::featurize` after 5 warm-up runs, plus `text_features` alone. Prints a markdown table.
//!
//! `cargo run --release -p benchmarks --bin featurize_bench [-- MODEL_DIR]`
//! (MODEL_DIR defaults to `$POLYLLM_MODELS_DIR/all-MiniLM-L6-v2`, else `models/all-MiniLM-L6-v2`).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use polyllm_common::features::{text_features, Embedder, Featurizer, Pca};

const WARMUP: usize = 5;
const RUNS: usize = 50;

fn model_dir() -> PathBuf {
    if let Some(arg) = std::env::args().nth(1) {
        return PathBuf::from(arg);
    }
    std::env::var_os("POLYLLM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
        .join("all-MiniLM-L6-v2")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn time_runs(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(Duration, Duration)> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.9)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A prompt of about `target` WordPiece tokens ([CLS]/[SEP] included), built from prose words.
fn prompt_of(embedder: &Embedder, target: usize) -> anyhow::Result<String> {
    const WORDS: &[&str] = &[
        "explain", "how", "the", "router", "picks", "a", "model", "for", "each", "prompt", "and", "why", "small",
        "models", "are", "cheaper", "than", "large", "ones", "when", "latency", "matters", "most",
    ];
    let mut text = String::new();
    let mut i = 0;
    while embedder.count_tokens(&text)? < target {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[i % WORDS.len()]);
        i += 1;
    }
    Ok(text)
}

fn main() -> anyhow::Result<()> {
    let dir = model_dir();
    let t = Instant::now();
    let embedder = Embedder::load(&dir)
        .with_context(|| format!("run `target/debug/fetch-models --only minilm` ({})", dir.display()))?;
    let load = t.elapsed();
    // A small PCA fitted on a few prompts, as the router model would carry.
    let fit_rows = ["hello", "write a sort in rust", "what is 2+2", "summarize this essay", "prove it"]
        .iter()
        .map(|p| embedder.embed(p).map(|e| e.vector))
        .collect::<Result<Vec<_>, _>>()?;
    let pca = Pca::fit(&fit_rows, 4)?;
    let prompts = [8, 32, 64, 128].iter().map(|&n| prompt_of(&embedder, n)).collect::<anyhow::Result<Vec<_>>>()?;
    let featurizer = Featurizer::new(embedder);

    let profile = if cfg!(debug_assertions) { "dev (deps opt-level 3)" } else { "release" };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("featurize_bench: profile {profile}, {threads} CPU threads, model load {:.0} ms", ms(load));
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!();
    println!("| tokens | featurize p50 (ms) | featurize p90 (ms) | text_features p50 (µs) | text_features p90 (µs) |");
    println!("|---:|---:|---:|---:|---:|");
    for prompt in &prompts {
        let tokens = featurizer.embedder().count_tokens(prompt)?;
        let (p50, p90) = time_runs(|| {
            std::hint::black_box(featurizer.featurize(prompt, &pca)?);
            Ok(())
        })?;
        let (t50, t90) = time_runs(|| {
            std::hint::black_box(text_features(std::hint::black_box(prompt), tokens));
            Ok(())
        })?;
        println!("| {tokens} | {:.2} | {:.2} | {:.1} | {:.1} |", ms(p50), ms(p90), ms(t50) * 1e3, ms(t90) * 1e3);
    }
    Ok(())
}
