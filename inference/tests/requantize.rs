//! Numerics of the load-time re-packing of Q4_0/Q5_0 matrices as Q8_0: over 1,000 greedy decode
//! steps the top-1 token agrees with the file's own types at least 99% of the time, and the
//! perplexity of a fixed text stays within 1%. The re-packing keeps every weight bit for bit; what
//! differs is the kernel candle runs for each block type (how it quantizes and sums the
//! activations), which moves near-ties.
mod support;

use candle_core::{Device, Tensor, D};
use inference::model::{GgufHeader, Weights};
use inference::tokenizer::GgufTokenizer;

/// The tokenizer fixture corpus (code, prose, unicode, digits), joined: a varied fixed text.
fn text() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/gemma3.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v.as_array().or_else(|| v["cases"].as_array()).expect("fixture list");
    cases.iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n")
}

/// Greedy choices and per-token negative log-likelihoods of `ids` (teacher forced).
fn score(weights: &Weights, ids: &[u32]) -> (Vec<u32>, Vec<f64>) {
    let dev = Device::Cpu;
    let mut s = weights.session(ids.len());
    let (mut top, mut nll) = (Vec::new(), Vec::new());
    for start in (0..ids.len() - 1).step_by(128) {
        let end = (start + 128).min(ids.len() - 1);
        let logits = s.forward_all(&ids[start..end], start, &dev).unwrap();
        top.extend(logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap());
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let targets = Tensor::new(&ids[start + 1..end + 1], &dev).unwrap().unsqueeze(1).unwrap();
        let picked = logp.gather(&targets, 1).unwrap().squeeze(1).unwrap().to_vec1::<f32>().unwrap();
        nll.extend(picked.iter().map(|&x| -(x as f64)));
    }
    (top, nll)
}

/// Greedy continuation of `prompt` for `n` tokens.
fn greedy(weights: &Weights, prompt: &[u32], n: usize) -> Vec<u32> {
    let dev = Device::Cpu;
    let mut s = weights.session(prompt.len() + n);
    let mut logits = s.forward(prompt, 0, &dev).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        logits = s.forward(&[next], prompt.len() + i, &dev).unwrap();
    }
    out
}

#[test]
fn q8_0_requantization_keeps_top1_and_perplexity() {
    let path = support::model(support::GEMMA);
    let header = GgufHeader::read(&path).unwrap();
    let tok = GgufTokenizer::from_gguf(&header.content).unwrap();
    let base = Weights::load(GgufHeader::read(&path).unwrap(), &Device::Cpu, 1024, false).unwrap();
    let rq = Weights::load(header, &Device::Cpu, 1024, true).unwrap();

    // 1,000 decode steps: greedy continuations of four prompts, each step checked under both.
    let prompts = ["def quicksort(items):", "The history of the printing press", "Ingredients for a simple bread:", "// A C function that reverses a string\n"];
    let (mut same, mut steps) = (0usize, 0usize);
    for p in prompts {
        let prompt = tok.encode(p, true).unwrap();
        let cont = greedy(&rq, &prompt, 250);
        let seq: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let (top_a, _) = score(&base, &seq);
        let (top_b, _) = score(&rq, &seq);
        for i in prompt.len() - 1..seq.len() - 1 {
            steps += 1;
            same += usize::from(top_a[i] == top_b[i]);
        }
    }
    assert_eq!(steps, 1000);
    let agree = same as f64 / steps as f64;

    // Perplexity of a fixed varied text (code, prose, unicode, digits).
    let mut ids = tok.encode(&text(), true).unwrap();
    ids.truncate(400);
    let ppl = |v: &[f64]| (v.iter().sum::<f64>() / v.len() as f64).exp();
    let (pa, pb) = (ppl(&score(&base, &ids).1), ppl(&score(&rq, &ids).1));
    eprintln!("top-1 agreement {agree:.4} over {steps} decode steps; perplexity {pa:.3} (file types) vs {pb:.3} (Q8_0), ratio {:.4}", pb / pa);
    assert!(agree >= 0.99, "top-1 agreement {agree:.4} < 0.99");
    assert!((pb / pa - 1.0).abs() <= 0.01, "perplexity {pb:.3} vs {pa:.3}: more than 1% apart");
    assert!(pa > 1.0 && pa.is_finite());
}
