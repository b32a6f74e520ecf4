//! Continuous batching keeps every sequence's output: on all three models, greedy continuations
//! decoded in a batch whose members join and leave at different steps are token for token the
//! same as each prompt decoded alone, and the batch's logits are bit for bit the lone ones.
mod support;

use candle_core::Device;
use inference::kernels::Kernels;
use inference::model::{GgufHeader, Session, Weights};
use inference::tokenizer::GgufTokenizer;

const PROMPTS: [&str; 5] = [
    "def quicksort(items):",
    "The history of the printing press begins in",
    "Ingredients for a simple bread:",
    "// A C function that reverses a string\n",
    "Q: What is the capital of France?\nA:",
];

/// Greedy continuation of `prompt` for `n` tokens, alone.
fn alone(weights: &Weights, prompt: &[u32], n: usize) -> Vec<u32> {
    let dev = Device::Cpu;
    let mut s = weights.session(prompt.len() + n);
    let mut logits = s.forward(prompt, 0, &dev).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if i + 1 < n {
            logits = s.forward(&[next], prompt.len() + i, &dev).unwrap();
        }
    }
    out
}

struct Running {
    idx: usize,
    session: Session,
    prompt_len: usize,
    out: Vec<u32>,
    logits: candle_core::Tensor,
}

/// Greedy continuations of every prompt, decoded together: prompt `i` joins at step `3 i` and
/// stops after `lens[i]` tokens.
fn batched(weights: &Weights, prompts: &[Vec<u32>], lens: &[usize]) -> (Vec<Vec<u32>>, usize) {
    let dev = Device::Cpu;
    let mut done: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut running: Vec<Running> = Vec::new();
    let (mut step, mut widest) = (0, 0);
    while done.iter().zip(lens).any(|(d, &n)| d.len() < n) {
        for (i, p) in prompts.iter().enumerate() {
            if step == 3 * i {
                let mut session = weights.session(p.len() + lens[i]);
                let logits = session.forward(p, 0, &dev).unwrap();
                running.push(Running { idx: i, session, prompt_len: p.len(), out: Vec::new(), logits });
            }
        }
        let mut tokens = Vec::new();
        for r in running.iter_mut() {
            let next = r.logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            r.out.push(next);
            tokens.push(next);
        }
        // Finished sequences leave before the step.
        let mut keep = Vec::new();
        let mut keep_tokens = Vec::new();
        for (r, t) in running.drain(..).zip(tokens) {
            if r.out.len() == lens[r.idx] {
                done[r.idx] = r.out;
            } else {
                keep.push(r);
                keep_tokens.push(t);
            }
        }
        running = keep;
        if !running.is_empty() {
            widest = widest.max(running.len());
            let positions: Vec<usize> = running.iter().map(|r| r.prompt_len + r.out.len() - 1).collect();
            let mut sessions: Vec<&mut Session> = running.iter_mut().map(|r| &mut r.session).collect();
            let logits = Session::forward_batch(&mut sessions, &keep_tokens, &positions, &dev).unwrap();
            assert_eq!(logits.dims()[0], running.len());
            for (row, r) in running.iter_mut().enumerate() {
                r.logits = logits.get(row).unwrap();
            }
        }
        step += 1;
    }
    (done, widest)
}

fn check(model: &str) {
    let path = support::model(model);
    let header = GgufHeader::read(&path).unwrap();
    let tok = GgufTokenizer::from_gguf(&header.content).unwrap();
    let weights = Weights::load(header, &Device::Cpu, 512, Kernels::Fast).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tok.encode(p, true).unwrap()).collect();
    let lens = [40, 24, 33, 12, 28];
    let (got, widest) = batched(&weights, &prompts, &lens);
    assert!(widest >= 4, "{model}: the batch never held more than {widest} sequences");
    for (i, p) in prompts.iter().enumerate() {
        let want = alone(&weights, p, lens[i]);
        assert_eq!(got[i], want, "{model}: prompt {i} ({:?}) decoded differently in the batch", PROMPTS[i]);
    }
    eprintln!("{model}: {} prompts token-identical, batch of up to {widest}", prompts.len());

    // One step's logits, bit for bit: three sequences decoding the same next tokens alone and
    // together.
    let dev = Device::Cpu;
    let mk = |p: &Vec<u32>| {
        let mut s = weights.session(p.len() + 2);
        let l = s.forward(p, 0, &dev).unwrap();
        (s, l.argmax(0).unwrap().to_scalar::<u32>().unwrap())
    };
    let mut lone = Vec::new();
    for p in &prompts[..3] {
        let (mut s, t) = mk(p);
        lone.push(s.forward(&[t], p.len(), &dev).unwrap().to_vec1::<f32>().unwrap());
    }
    let (mut ss, ts): (Vec<Session>, Vec<u32>) = prompts[..3].iter().map(mk).unzip();
    let positions: Vec<usize> = prompts[..3].iter().map(|p| p.len()).collect();
    let mut refs: Vec<&mut Session> = ss.iter_mut().collect();
    let together = Session::forward_batch(&mut refs, &ts, &positions, &dev).unwrap().to_vec2::<f32>().unwrap();
    for (i, (a, b)) in lone.iter().zip(&together).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(a) == bits(b), "{model}: sequence {i}'s logits differ in the batch");
    }
}

#[test]
fn batched_greedy_is_token_identical_gemma() {
    check(support::GEMMA);
}

#[test]
fn batched_greedy_is_token_identical_qwen05() {
    check(support::QWEN05);
}

#[test]
fn batched_greedy_is_token_identical_qwen15() {
    check(support::QWEN15);
}
