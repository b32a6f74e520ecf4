//! Router overhead benchmark, and the stub backend it (and the router's tests) run against.
//!
//! `router_bench stub --port P [--device cuda]` serves a test double of a model service that
//! answers at once (`/health`, `/generate` SSE and JSON, `/v1/chat/completions`), so that what is
//! measured is the router alone.
//!
//! `router_bench bench` starts a stub in process and a `router` process in front of it, then
//! sends open-loop load at each `--rates` value, first straight to the stub, then through the
//! router, and prints the added p50/p99 latency, then the latency of a cache hit. Build both
//! binaries in release first: `cargo build --release -p router`.
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use polyllm_common::sse::encode;
use polyllm_common::wire::{DoneStats, FinishReason, GenerateRequest, HealthBody, TokenEvent};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "router_bench", about = "Router overhead benchmark and stub backend")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a stub model service that answers at once.
    Stub(StubArgs),
    /// Measure the router's added latency against the stub.
    Bench(BenchArgs),
}

#[derive(Parser, Clone)]
struct StubArgs {
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "s1")]
    model_id: String,
    #[arg(long, default_value = "stub-270m")]
    model: String,
    /// Reported device: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Token events per answer.
    #[arg(long, default_value_t = 4)]
    tokens: usize,
}

#[derive(Parser)]
struct BenchArgs {
    /// Request rates to test (requests per second).
    #[arg(long, value_delimiter = ',', default_values_t = vec![100u32, 1000])]
    rates: Vec<u32>,
    /// Seconds of load per rate and target.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Sequential cache hits to time.
    #[arg(long, default_value_t = 2000)]
    hits: usize,
    /// The router binary (default: next to this one).
    #[arg(long)]
    router_bin: Option<PathBuf>,
    /// WORKER_THREADS for the router (default: one per core).
    #[arg(long)]
    router_threads: Option<usize>,
    /// Pin the router to these CPUs (`taskset -c` list), e.g. `1` while this process runs
    /// under `taskset -c 0`, so that load generator and router do not compete for a core.
    #[arg(long)]
    router_cpus: Option<String>,
}

struct Stub {
    args: StubArgs,
    sse: bytes::Bytes,
    json: bytes::Bytes,
    chat: bytes::Bytes,
}

fn stats(a: &StubArgs) -> DoneStats {
    DoneStats {
        model_id: a.model_id.clone(),
        model: a.model.clone(),
        device: a.device.clone(),
        prompt_tokens: 3,
        completion_tokens: a.tokens as u32,
        finish_reason: FinishReason::Length,
        ttft_ms: 0.0,
        latency_ms: 0.0,
        tokens_per_second: 0.0,
    }
}

impl Stub {
    fn new(args: StubArgs) -> Self {
        let mut sse = String::new();
        let mut chat = String::new();
        let mut text = String::new();
        for i in 0..args.tokens {
            let t = format!(" tok{i}");
            sse.push_str(&encode("token", &serde_json::to_string(&TokenEvent { text: t.clone() }).unwrap()));
            chat.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
            ));
            text.push_str(&t);
        }
        let s = stats(&args);
        sse.push_str(&encode("done", &serde_json::to_string(&s).unwrap()));
        chat.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        ));
        chat.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": args.tokens}})
        ));
        chat.push_str("data: [DONE]\n\n");
        let mut whole = serde_json::to_value(&s).unwrap();
        whole["text"] = text.into();
        Stub { args, sse: sse.into(), json: serde_json::to_vec(&whole).unwrap().into(), chat: chat.into() }
    }
}

async fn stub_health(State(s): State<Arc<Stub>>) -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        model_id: s.args.model_id.clone(),
        model: s.args.model.clone(),
        arch: "stub".into(),
        device: s.args.device.clone(),
        batch: None,
    })
}

async fn stub_generate(State(s): State<Arc<Stub>>, Json(req): Json<GenerateRequest>) -> Response {
    if req.stream.unwrap_or(true) {
        ([(header::CONTENT_TYPE, "text/event-stream")], Body::from(s.sse.clone())).into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], Body::from(s.json.clone())).into_response()
    }
}

async fn stub_chat(State(s): State<Arc<Stub>>) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from(s.chat.clone())).into_response()
}

async fn run_stub(args: StubArgs) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/health", get(stub_health))
        .route("/generate", post(stub_generate))
        .route("/v1/chat/completions", post(stub_chat))
        .with_state(Arc::new(Stub::new(args)));
    let h = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("stub server");
    });
    Ok((port, h))
}

struct KillOnDrop(Child);

/// CPU seconds (user + system) the process has used so far, from /proc (Linux).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_ready(client: &reqwest::Client, router: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{router}/health")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["healthy_backends"].as_u64().unwrap_or(0) > 0 {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("router at {router} did not become ready")
}

fn start_router(
    bin: &PathBuf,
    stub_port: u16,
    cache: bool,
    threads: Option<usize>,
    cpus: Option<&str>,
) -> anyhow::Result<(KillOnDrop, String)> {
    let port = free_port();
    let mut cmd = match cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c]).arg(bin);
            t
        }
        None => Command::new(bin),
    };
    if let Some(n) = threads {
        cmd.env("WORKER_THREADS", n.to_string());
    }
    let child = cmd
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("BACKENDS", format!(r#"{{"s1":"http://127.0.0.1:{stub_port}"}}"#))
        .env("RATE_LIMIT_RPS", "0")
        .env("CACHE_TTL_SECS", if cache { "3600" } else { "0" })
        .env("HEALTH_INTERVAL_MS", "1000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((KillOnDrop(child), format!("http://127.0.0.1:{port}")))
}

const BODY: &str = r#"{"prompt":"Write a haiku about routers.","max_tokens":4}"#;
const CACHED_BODY: &str = r#"{"prompt":"Write a haiku about caches.","max_tokens":4,"temp":0}"#;

/// One full request: send, read the whole SSE body. Returns the latency.
async fn one(client: &reqwest::Client, url: &str, body: &'static str) -> Option<Duration> {
    let t = Instant::now();
    let r = client.post(url).header(header::CONTENT_TYPE, "application/json").body(body).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let b = r.bytes().await.ok()?;
    if !b.windows(11).any(|w| w == b"event: done") {
        return None;
    }
    Some(t.elapsed())
}

struct Sample {
    p50: f64,
    p99: f64,
    n: usize,
    errors: usize,
    achieved_rps: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Open-loop load: a request starts every 1/rate seconds, whatever the previous ones do.
async fn load(client: &reqwest::Client, url: &str, rate: u32, secs: u64) -> Sample {
    let total = rate as u64 * secs;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for _ in 0..total {
        tick.tick().await;
        let c = client.clone();
        let u = url.to_string();
        handles.push(tokio::spawn(async move { one(&c, &u, BODY).await }));
    }
    let sent_in = start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        match h.await.ok().flatten() {
            Some(d) => lat.push(d.as_secs_f64() * 1000.0),
            None => errors += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    Sample { p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), n: lat.len(), errors, achieved_rps: total as f64 / sent_in }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let bin = match args.router_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("router"),
    };
    anyhow::ensure!(
        bin.exists(),
        "router binary {} not found; build it with cargo build --release -p router",
        bin.display()
    );
    let (stub_port, _stub) = run_stub(StubArgs {
        port: 0,
        model_id: "s1".into(),
        model: "stub-270m".into(),
        device: "cpu".into(),
        tokens: 4,
    })
    .await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(4096).tcp_nodelay(true).no_proxy().build()?;
    let direct = format!("http://127.0.0.1:{stub_port}/generate");

    let (router_proc, router) = start_router(&bin, stub_port, false, args.router_threads, args.router_cpus.as_deref())?;
    wait_ready(&client, &router).await?;
    let via = format!("{router}/generate");
    // Warm both paths (connections, allocator, caches).
    for _ in 0..500 {
        one(&client, &direct, BODY).await;
        one(&client, &via, BODY).await;
    }
    println!("| rate (req/s) | target | p50 ms | p99 ms | ok | errors | achieved req/s |");
    println!("|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    for &rate in &args.rates {
        let d = load(&client, &direct, rate, args.duration_secs).await;
        let cpu0 = cpu_secs(router_proc.0.id());
        let r = load(&client, &via, rate, args.duration_secs).await;
        let cpu = match (cpu0, cpu_secs(router_proc.0.id())) {
            (Some(a), Some(b)) if r.n > 0 => (b - a) / r.n as f64 * 1e6,
            _ => f64::NAN,
        };
        for (name, s) in [("direct", &d), ("router", &r)] {
            println!(
                "| {rate} | {name} | {:.3} | {:.3} | {} | {} | {:.0} |",
                s.p50, s.p99, s.n, s.errors, s.achieved_rps
            );
        }
        added.push((rate, r.p50 - d.p50, r.p99 - d.p99, cpu));
    }
    // The router's own view: time from accepting a request to its last byte (includes the hop
    // to the stub and back), from its histogram, over every rate above.
    let metrics = client.get(format!("{router}/metrics")).send().await?.text().await?;
    let bucket = |le: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("router_request_latency_seconds_bucket") && l.contains(&format!("le=\"{le}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let total = bucket("+Inf");
    println!();
    println!(
        "router_request_latency_seconds (inside the router, {total:.0} requests): {:.2}% <= 0.5 ms, {:.2}% <= 1 ms, {:.2}% <= 5 ms",
        100.0 * bucket("0.0005") / total,
        100.0 * bucket("0.001") / total,
        100.0 * bucket("0.005") / total
    );
    println!();
    println!("| rate (req/s) | added p50 ms | added p99 ms | router CPU per request (µs) |");
    println!("|---|---|---|---|");
    for (rate, p50, p99, cpu) in &added {
        println!("| {rate} | {p50:.3} | {p99:.3} | {cpu:.0} |");
    }
    drop(router_proc);

    let (_router_proc, router) = start_router(&bin, stub_port, true, args.router_threads, args.router_cpus.as_deref())?;
    wait_ready(&client, &router).await?;
    let via = format!("{router}/generate");
    let first = client.post(&via).header(header::CONTENT_TYPE, "application/json").body(CACHED_BODY).send().await?;
    anyhow::ensure!(first.headers().get("x-cache").is_some_and(|v| v == "MISS"), "first request should miss");
    first.bytes().await?;
    let mut lat = Vec::with_capacity(args.hits);
    let mut direct_lat = Vec::with_capacity(args.hits);
    for _ in 0..args.hits {
        let t = Instant::now();
        let r = client.post(&via).header(header::CONTENT_TYPE, "application/json").body(CACHED_BODY).send().await?;
        anyhow::ensure!(r.headers().get("x-cache").is_some_and(|v| v == "HIT"), "expected a cache hit");
        r.bytes().await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Some(d) = one(&client, &direct, BODY).await {
            direct_lat.push(d.as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    direct_lat.sort_by(f64::total_cmp);
    println!();
    println!("| sequential, {} requests | p50 ms | p99 ms |", args.hits);
    println!("|---|---|---|");
    println!("| router cache hit | {:.3} | {:.3} |", pct(&lat, 0.5), pct(&lat, 0.99));
    println!("| direct stub call (for scale) | {:.3} | {:.3} |", pct(&direct_lat, 0.5), pct(&direct_lat, 0.99));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Stub(a) => {
                let (port, h) = run_stub(a).await?;
                println!("stub listening on 127.0.0.1:{port}");
                h.await?;
                Ok(())
            }
            Cmd::Bench(a) => bench(a).await,
        }
    })
}
