//! `--concurrency`: N sequences decoded at once, side by side for our engine, llama.cpp and (with
//! `--service`) the service.
//!
//! Each sequence gets its own 16-token prompt (from a different place of the text) and decodes
//! `--decode` greedy tokens. Figures per N, medians over `--runs`:
//! - aggregate decode tok/s: tokens of all sequences after the first, over the decode time;
//! - per-stream time per output token (TPOT), p50/p95 over the steps (the engines) or requests
//!   (the service);
//! - TTFT p50/p95: from the start until a sequence has its first token (prompt run).
//!
//! Our engine: each prompt in turn ([`Session::forward`], as the batch runs one prefill chunk per
//! step), then one [`Session::forward_batch`] per step. llama.cpp (`scripts/llama_cpp_batch.py`):
//! all prompts in one `llama_decode`, then one per step with a token per sequence id. The service:
//! N concurrent `/generate` requests (`--max-concurrent` N), its own reported `ttft_ms`.
use super::{llama_cpp_wanted, median, text_path, Args, Service};
use anyhow::{Context, Result};
use candle_core::Device;
use inference::kernels::Kernels;
use inference::model::{GgufHeader, Session, Weights};
use inference::tokenizer::GgufTokenizer;
use polyllm_common::wire::GenerateResponse;
use std::path::{Path, PathBuf};
use std::time::Instant;

const PROMPT: usize = 16;

/// One engine's figures at one N.
#[derive(Clone, Copy)]
struct Row {
    aggregate: f64,
    tpot: (f64, f64),
    ttft: (f64, f64),
}

/// The p-th percentile (0-100) of `v`, nearest rank.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Per run: (aggregate tok/s, TPOT samples in s, TTFT samples in s); the row takes the median
/// aggregate and the percentiles of all samples.
fn row(runs: Vec<(f64, Vec<f64>, Vec<f64>)>) -> Row {
    let aggregate = median(runs.iter().map(|r| r.0).collect());
    let tpot: Vec<f64> = runs.iter().flat_map(|r| r.1.clone()).collect();
    let ttft: Vec<f64> = runs.iter().flat_map(|r| r.2.clone()).collect();
    Row { aggregate, tpot: (pct(&tpot, 50.0), pct(&tpot, 95.0)), ttft: (pct(&ttft, 50.0), pct(&ttft, 95.0)) }
}

/// `n` prompts of 16 tokens from different places of the bench text.
fn prompts(path: &Path, n: usize) -> Result<(GgufTokenizer, Vec<Vec<u32>>)> {
    let header = GgufHeader::read(path)?;
    let tok = GgufTokenizer::from_gguf(&header.content)?;
    let mut ids = tok.encode(&std::fs::read_to_string(text_path())?, false)?;
    while ids.len() < n * 37 + PROMPT {
        ids.extend(ids.clone());
    }
    Ok((tok, (0..n).map(|i| ids[i * 37..i * 37 + PROMPT].to_vec()).collect()))
}

fn ours(path: &Path, args: &Args, prompts: &[Vec<u32>]) -> Result<Vec<Row>> {
    let dev = Device::Cpu;
    let weights = Weights::load(GgufHeader::read(path)?, &dev, PROMPT + args.decode + 8, Kernels::Fast)?;
    let mut rows = Vec::new();
    for &n in &args.concurrency {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let t0 = Instant::now();
            let mut sessions: Vec<Session> = Vec::with_capacity(n);
            let (mut next, mut ttft) = (Vec::new(), Vec::new());
            for p in &prompts[..n] {
                let mut s = weights.session(PROMPT + args.decode);
                next.push(s.forward(p, 0, &dev)?.argmax(0)?.to_scalar::<u32>()?);
                ttft.push(t0.elapsed().as_secs_f64());
                sessions.push(s);
            }
            let t1 = Instant::now();
            let mut steps = Vec::new();
            for i in 0..args.decode - 1 {
                let ts = Instant::now();
                let positions = vec![PROMPT + i; n];
                let mut refs: Vec<&mut Session> = sessions.iter_mut().collect();
                let logits = Session::forward_batch(&mut refs, &next, &positions, &dev)?;
                next = logits.argmax(1)?.to_vec1::<u32>()?;
                steps.push(ts.elapsed().as_secs_f64());
            }
            let decode_s = t1.elapsed().as_secs_f64();
            runs.push(((n * (args.decode - 1)) as f64 / decode_s, steps, ttft));
        }
        rows.push(row(runs));
    }
    Ok(rows)
}

fn llama_cpp(path: &Path, args: &Args, prompts: &[Vec<u32>]) -> Result<Option<Vec<Row>>> {
    if !llama_cpp_wanted(args) {
        return Ok(None);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_cpp_batch.py");
    let levels: Vec<String> = args.concurrency.iter().map(|n| n.to_string()).collect();
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(path)
        .args(["--threads", &args.threads.to_string(), "--concurrency", &levels.join(",")])
        .args(["--decode", &args.decode.to_string(), "--runs", &args.runs.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running llama_cpp_batch.py")?;
    serde_json::to_writer(child.stdin.take().unwrap(), prompts)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "llama_cpp_batch.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut rows = Vec::new();
    for &n in &args.concurrency {
        let runs = v[n.to_string()].as_array().context("no runs")?;
        let runs = runs
            .iter()
            .map(|r| {
                let steps: Vec<f64> = r["steps_s"].as_array().unwrap().iter().filter_map(|x| x.as_f64()).collect();
                let decode_s = r["decode_s"].as_f64().unwrap();
                let ttft = vec![r["ttft_s"].as_f64().unwrap(); n];
                ((n * (args.decode - 1)) as f64 / decode_s, steps, ttft)
            })
            .collect();
        rows.push(row(runs));
    }
    Ok(Some(rows))
}

/// N concurrent requests to the service (`--max-concurrent` the largest N).
fn service(path: &Path, args: &Args, tok: &GgufTokenizer, prompts: &[Vec<u32>]) -> Result<Vec<Row>> {
    let bin = std::env::current_exe()?.with_file_name("inference");
    anyhow::ensure!(bin.exists(), "{} not built (cargo build --workspace)", bin.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let most = args.concurrency.iter().copied().max().unwrap_or(1);
    let _child = Service(
        std::process::Command::new(&bin)
            .arg("--model")
            .arg(path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", &args.threads.to_string()])
            .args(["--context", &(64 + args.decode).to_string(), "--max-concurrent", &most.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let texts: Vec<String> = prompts.iter().map(|p| tok.decode(p)).collect::<Result<_>>()?;
    let base = format!("http://127.0.0.1:{port}");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !matches!(http.get(format!("{base}/health")).send().await, Ok(r) if r.status().is_success()) {
            anyhow::ensure!(started.elapsed().as_secs() < 300, "the service did not become healthy in 300 s");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let mut rows = Vec::new();
        for &n in &args.concurrency {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let t0 = Instant::now();
                let calls = texts[..n].iter().map(|prompt| {
                    let body = serde_json::json!({ "prompt": prompt, "max_tokens": args.decode, "temperature": 0.0,
                        "stream": false, "chat": false });
                    let req = http.post(format!("{base}/generate")).json(&body).send();
                    async move { anyhow::Ok(req.await?.error_for_status()?.json::<GenerateResponse>().await?) }
                });
                let done = futures::future::try_join_all(calls).await?;
                let wall = t0.elapsed().as_secs_f64();
                let tokens: u32 = done.iter().map(|r| r.stats.completion_tokens).sum();
                let tpot = done
                    .iter()
                    .filter(|r| r.stats.completion_tokens > 1)
                    .map(|r| (r.stats.latency_ms - r.stats.ttft_ms) / 1e3 / (r.stats.completion_tokens - 1) as f64)
                    .collect();
                let ttft: Vec<f64> = done.iter().map(|r| r.stats.ttft_ms / 1e3).collect();
                // Decode time: from the first first token to the end.
                let first = ttft.iter().copied().fold(f64::INFINITY, f64::min);
                runs.push(((tokens as f64 - n as f64) / (wall - first), tpot, ttft));
            }
            rows.push(row(runs));
        }
        Ok(rows)
    })
}

pub fn run(args: &Args, models: &[PathBuf]) -> Result<()> {
    anyhow::ensure!(args.decode >= 2, "--decode must be at least 2");
    let most = args.concurrency.iter().copied().max().unwrap_or(1);
    println!(
        "| model | engine | N | aggregate decode tok/s | x its N=1 | vs llama.cpp | TPOT p50 / p95 ms | TTFT p50 / p95 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for path in models {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (tok, prompts) = prompts(path, most)?;
        let theirs = llama_cpp(path, args, &prompts)?;
        let mut engines = vec![("polyllm engine", ours(path, args, &prompts)?)];
        if let Some(t) = &theirs {
            engines.push(("llama.cpp", t.clone()));
        }
        if args.service {
            engines.push(("polyllm service", service(path, args, &tok, &prompts)?));
        }
        for (engine, rows) in &engines {
            for (i, (&n, r)) in args.concurrency.iter().zip(rows).enumerate() {
                let vs = match &theirs {
                    Some(t) if *engine != "llama.cpp" => format!("{:.2}x", r.aggregate / t[i].aggregate),
                    _ => String::new(),
                };
                println!(
                    "| {name} | {engine} | {n} | {:.1} | {:.2}x | {vs} | {:.1} / {:.1} | {:.0} / {:.0} |",
                    r.aggregate,
                    r.aggregate / rows[0].aggregate,
                    r.tpot.0 * 1e3,
                    r.tpot.1 * 1e3,
                    r.ttft.0 * 1e3,
                    r.ttft.1 * 1e3
                );
            }
        }
    }
    Ok(())
}
