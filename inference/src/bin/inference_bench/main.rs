//! `inference_bench`: prefill and decode speed of our engine on each GGUF file, side by side with
//! llama.cpp (through the `llama_cpp` Python package, when installed) on the same file, in one run.
//!
//! Prefill: one forward pass over the first N tokens of a fixed text from an empty cache (N = 128
//! and 512). Decode: after a 16-token prompt, 128 greedy tokens, one forward pass each. Each figure
//! is the median of `--runs` runs; ratios are ours over llama.cpp's.
//!
//! With `--concurrency 1,2,4,8`: N sequences (16-token prompts from different places of the text)
//! decoded together, `--decode` tokens each; see [`concurrency`].
//!
//!     cargo run --release -p inference --bin inference_bench -- --threads 2 --runs 3
//!     cargo run --release -p inference --bin inference_bench -- --concurrency 1,2,4,8 --decode 64 --service
use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use inference::kernels::Kernels;
use inference::model::{GgufHeader, Weights};
use inference::tokenizer::GgufTokenizer;
use polyllm_common::wire::GenerateResponse;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Prefill and decode tok/s of our engine and of llama.cpp on the same GGUF files.")]
struct Args {
    /// GGUF files; default: the three models in --models-dir.
    #[arg(long, value_delimiter = ',')]
    models: Vec<PathBuf>,
    #[arg(long, env = "MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// CPU threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Prompt lengths for prefill.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    prefill: Vec<usize>,
    /// Greedy tokens for decode.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Our engine's kernel choices to measure (see the service's `--kernels`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fast,repack")]
    kernels: Vec<Kernels>,
    /// Skip llama.cpp even when its Python package is installed.
    #[arg(long)]
    no_llama_cpp: bool,
    /// Also start the `inference` service (the binary beside this one, default kernels) on each
    /// file and compare the tokens_per_second its `/generate` reports for the same greedy decode
    /// with the engine's figure.
    #[arg(long)]
    service: bool,
    /// Instead of the single-stream table: N sequences decoded at once, for each N given (e.g.
    /// 1,2,4,8): aggregate decode tok/s, per-stream time per output token and TTFT, p50/p95, for
    /// our engine's batched step, for llama.cpp's batched decode (one context, N sequence ids) and,
    /// with --service, for N concurrent requests to the service.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Figures {
    prefill: Vec<(usize, f64)>,
    decode: f64,
}

fn text_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_text.txt")
}

/// Resident memory of this process, in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn ours(path: &Path, args: &Args, kernels: Kernels) -> Result<(Figures, f64, f64)> {
    let header = GgufHeader::read(path)?;
    let tok = GgufTokenizer::from_gguf(&header.content)?;
    let text = std::fs::read_to_string(text_path())?;
    let mut ids = tok.encode(&text, false)?;
    let need = args.prefill.iter().copied().max().unwrap_or(0).max(16) + 1;
    while ids.len() < need {
        ids.extend(ids.clone());
    }
    let context = need + args.decode + 16;
    let (t0, rss0) = (Instant::now(), rss_mib());
    let weights = Weights::load(header, &Device::Cpu, context, kernels)?;
    let load_s = t0.elapsed().as_secs_f64();
    let weights_mib = rss_mib() - rss0;
    let dev = Device::Cpu;
    let mut prefill = Vec::new();
    for &n in &args.prefill {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let mut s = weights.session(n);
            let t = Instant::now();
            s.forward(&ids[..n], 0, &dev)?;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        prefill.push((n, median(rates)));
    }
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let mut s = weights.session(16 + args.decode);
        let mut logits = s.forward(&ids[..16], 0, &dev)?;
        let t = Instant::now();
        for i in 0..args.decode {
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            logits = s.forward(&[next], 16 + i, &dev)?;
        }
        rates.push(args.decode as f64 / t.elapsed().as_secs_f64());
    }
    Ok((Figures { prefill, decode: median(rates) }, load_s, weights_mib))
}

/// The 16-token decode prompt as text, for the service.
fn decode_prompt(path: &Path) -> Result<String> {
    let header = GgufHeader::read(path)?;
    let tok = GgufTokenizer::from_gguf(&header.content)?;
    let ids = tok.encode(&std::fs::read_to_string(text_path())?, false)?;
    tok.decode(&ids[..16.min(ids.len())])
}

/// Kills the service when the measurement ends, however it ends.
struct Service(std::process::Child);
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Median tokens_per_second reported by `/generate` (greedy, `--decode` tokens, not streamed)
/// from the `inference` service serving `path`, and the completion length of the last call.
fn service(path: &PathBuf, args: &Args) -> Result<(f64, u64)> {
    let bin = std::env::current_exe()?.with_file_name("inference");
    anyhow::ensure!(bin.exists(), "{} not built (cargo build --workspace)", bin.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _child = Service(
        std::process::Command::new(&bin)
            .arg("--model")
            .arg(path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", &args.threads.to_string()])
            .args(["--context", &(64 + args.decode).to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let prompt = decode_prompt(path)?;
    let base = format!("http://127.0.0.1:{port}");
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !matches!(http.get(format!("{base}/health")).send().await, Ok(r) if r.status().is_success()) {
            anyhow::ensure!(started.elapsed().as_secs() < 300, "the service did not become healthy in 300 s");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let body =
            serde_json::json!({ "prompt": prompt, "max_tokens": args.decode, "temperature": 0.0, "stream": false });
        let (mut rates, mut completion) = (Vec::new(), 0);
        for _ in 0..args.runs {
            let r: GenerateResponse =
                http.post(format!("{base}/generate")).json(&body).send().await?.error_for_status()?.json().await?;
            rates.push(r.stats.tokens_per_second);
            completion = r.stats.completion_tokens as u64;
        }
        Ok((median(rates), completion))
    })
}

/// Whether to compare with llama.cpp: not turned off, and its Python package installed.
fn llama_cpp_wanted(args: &Args) -> bool {
    if args.no_llama_cpp {
        return false;
    }
    let probe = std::process::Command::new("python3").args(["-c", "import llama_cpp"]).output();
    let ok = probe.map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("llama_cpp Python package not installed: `pip install llama-cpp-python` to compare");
    }
    ok
}

fn llama_cpp(path: &PathBuf, args: &Args) -> Result<Option<Figures>> {
    if !llama_cpp_wanted(args) {
        return Ok(None);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_cpp_bench.py");
    let sizes: Vec<String> = args.prefill.iter().map(|n| n.to_string()).collect();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(path)
        .args([
            "--threads",
            &args.threads.to_string(),
            "--prefill",
            &sizes.join(","),
            "--decode",
            &args.decode.to_string(),
        ])
        .args(["--runs", &args.runs.to_string(), "--text"])
        .arg(text_path())
        .output()
        .context("running llama_cpp_bench.py")?;
    anyhow::ensure!(out.status.success(), "llama_cpp_bench.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rates =
        |x: &serde_json::Value| x.as_array().map(|a| a.iter().filter_map(|r| r.as_f64()).collect()).unwrap_or_default();
    let prefill = args.prefill.iter().map(|n| (*n, median(rates(&v["prefill"][n.to_string()])))).collect();
    Ok(Some(Figures { prefill, decode: median(rates(&v["decode"])) }))
}

mod concurrency;

fn main() -> Result<()> {
    let args = Args::parse();
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    // As the service does (main.rs): activations reuse freed heap instead of fresh pages.
    inference::memory::retain_freed_memory();
    let models = if args.models.is_empty() {
        [
            "gemma-3-270m-q4_k_m.gguf",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ]
        .iter()
        .map(|f| args.models_dir.join(f))
        .filter(|p| p.exists())
        .collect()
    } else {
        args.models.clone()
    };
    if !args.concurrency.is_empty() {
        return concurrency::run(&args, &models);
    }
    let cols: Vec<String> = args.prefill.iter().map(|n| format!("prefill {n}")).collect();
    println!("| model | engine | {} | decode {} | load s | weights MiB |", cols.join(" | "), args.decode);
    println!("|---|---|{}---|---|---|", "---|".repeat(cols.len()));
    let mut service_rows = Vec::new();
    for path in &models {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let reference = llama_cpp(path, &args)?;
        if let Some(r) = &reference {
            let p: Vec<String> = r.prefill.iter().map(|(_, v)| format!("{v:.1}")).collect();
            println!("| {name} | llama.cpp | {} | {:.1} | | |", p.join(" | "), r.decode);
        }
        for &kernels in &args.kernels {
            let (f, load_s, weights_mib) = ours(path, &args, kernels)?;
            let engine = format!("polyllm --kernels {}", format!("{kernels:?}").to_lowercase());
            let cell = |ours: f64, theirs: Option<f64>| match theirs {
                Some(t) => format!("{ours:.1} ({:.2}x)", ours / t),
                None => format!("{ours:.1}"),
            };
            let p: Vec<String> = f
                .prefill
                .iter()
                .enumerate()
                .map(|(i, (_, v))| cell(*v, reference.as_ref().map(|r| r.prefill[i].1)))
                .collect();
            println!(
                "| {name} | {engine} | {} | {} | {load_s:.1} | {weights_mib:.0} |",
                p.join(" | "),
                cell(f.decode, reference.as_ref().map(|r| r.decode))
            );
            if args.service && kernels == Kernels::default() {
                let (rate, completion) = service(path, &args)?;
                service_rows.push(format!(
                    "| {name} | {:.1} | {rate:.1} | {:.3} | {completion} |",
                    f.decode,
                    rate / f.decode
                ));
            }
        }
    }
    if args.service {
        println!("\n| model | engine decode tok/s | service /generate tokens_per_second | ratio | completion tokens |");
        println!("|---|---|---|---|---|");
        for row in &service_rows {
            println!("{row}");
        }
    }
    Ok(())
}
