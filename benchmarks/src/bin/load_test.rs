//! `load_test`: puts a realistic load on the polyllm router and leaves CSVs, a summary and plots.
//!
//! Every request is streamed (SSE) and measured client-side. Results go to `--out`:
//! `requests.csv` (one row per request), `summary.csv` (per concurrency point and model), `outcomes.csv` (requests counted by how they ended),
//! `run.json` (the command and settings), the figures as PNG and SVG, and with `--prometheus`
//! `prometheus.csv` / `prometheus_summary.csv`.
use anyhow::{bail, Context, Result};
use benchmarks::client::{run_one, After, Target};
use benchmarks::dataset::{self, Draw};
use benchmarks::record::{self, RequestRecord, STATUS_CANCELLED};
use benchmarks::{plots, prom, stats};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use polyllm_common::route::{Preference, RouterGenerateRequest, Routing};
use polyllm_common::wire::GenerateRequest;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Prompts under ~30 tokens.
    Short,
    /// Paragraph-length prompts.
    Medium,
    /// Multi-paragraph text or whole code files (100+ lines).
    Long,
    /// All of the above.
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Short => "short",
            Workload::Medium => "medium",
            Workload::Long => "long",
            Workload::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Prefer {
    Cpu,
    Gpu,
    Auto,
}

impl From<Prefer> for Preference {
    fn from(p: Prefer) -> Self {
        match p {
            Prefer::Cpu => Preference::Cpu,
            Prefer::Gpu => Preference::Gpu,
            Prefer::Auto => Preference::Auto,
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "load_test",
    version,
    about = "Put a streaming load on the polyllm router; write requests.csv, summary.csv, plots (PNG+SVG) and a summary table.",
    after_help = "Example: load_test --workload medium --sweep 1,2,4,8 --requests 16 --max-tokens 32 --out results/medium"
)]
struct Args {
    /// Base URL of the router.
    #[arg(long, env = "LOADTEST_URL", default_value = "http://localhost:8080")]
    url: String,
    /// Prompt length bucket drawn from the prompt set.
    #[arg(long, value_enum, default_value_t = Workload::Short)]
    workload: Workload,
    /// Requests in flight at once (ignored with --sweep).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// A concurrency sweep, e.g. 1,2,4,8: one point per value, each with --requests or --duration.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<u32>>,
    /// Requests per concurrency point (default 16 when --duration is not given).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds per concurrency point: no request is started after it; those in flight finish.
    #[arg(long)]
    duration: Option<f64>,
    /// Routing preference sent with every request.
    #[arg(long, value_enum, default_value_t = Prefer::Auto)]
    prefer_backend: Prefer,
    /// Force a model name or backend id (m1 …); default lets the router choose.
    #[arg(long)]
    model: Option<String>,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Sampling temperature of every request.
    #[arg(long, default_value_t = 0.7)]
    temp: f64,
    /// Seed of the prompt draw (each concurrency point draws the same sequence).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Draw from only K prompts so they recur, and send `seed` with every request so the router may
    /// cache them (cache-hit runs). Without it no sampling seed is sent and, at temp > 0, the router
    /// cannot cache: every request is a miss.
    #[arg(long, value_name = "K")]
    repeat_prompts: Option<usize>,

    /// Ask the router's semantic cache too (`"semantic_cache": true`): a paraphrase of an answered
    /// prompt is answered from the cache.
    #[arg(long)]
    semantic_cache: bool,

    /// The learned router's quality/latency knob for every request (`"cost_weight"`); unset: the
    /// router's default.
    #[arg(long)]
    cost_weight: Option<f64>,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "POLYLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Output directory (created).
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
    /// Prometheus base URL: CPU/GPU utilization and other series over the run's window are read
    /// into prometheus.csv and prometheus_summary.csv.
    #[arg(long)]
    prometheus: Option<String>,
    /// Extra Prometheus series, NAME=PROMQL (repeatable).
    #[arg(long = "prom-query", value_name = "NAME=PROMQL")]
    prom_queries: Vec<String>,
    /// A JSONL prompt set ({id, category, prompt}) instead of the built-in datasets/prompts/loadtest.jsonl.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Limit of one request, in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// TTF font for the PNG/SVG text (default: $POLYLLM_FONT, else DejaVu Sans).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Write no figures.
    #[arg(long)]
    no_plots: bool,
    /// A label for plot titles (default: the workload).
    #[arg(long)]
    label: Option<String>,
    /// Send nothing: read DIR/requests.csv of an earlier run and write its summary.csv and figures
    /// into --out.
    #[arg(long, value_name = "DIR")]
    from_csv: Option<PathBuf>,
}

fn unix_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("load_test: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<i32> {
    let args = Args::parse();
    if let Some(dir) = &args.from_csv {
        let records = record::read_requests(&dir.join("requests.csv"))?;
        std::fs::create_dir_all(&args.out)?;
        let measured: Vec<RequestRecord> = records.into_iter().filter(|r| r.status != STATUS_CANCELLED).collect();
        let rows = stats::summarize(&measured);
        record::write_csv(&args.out.join("summary.csv"), &rows)?;
        println!("{}", stats::table(&rows));
        if !args.no_plots && !measured.is_empty() {
            let label = args.label.clone().unwrap_or_else(|| measured[0].workload.clone());
            let files = plots::draw_all(&args.out, &measured, &rows, &label, args.font.as_deref())?;
            println!("{} figures written to {}", files.len(), args.out.display());
        }
        return Ok(0);
    }
    let points: Vec<u32> = args.sweep.clone().unwrap_or_else(|| vec![args.concurrency]);
    if points.is_empty() || points.contains(&0) {
        bail!("concurrency values must be at least 1");
    }
    if let Some(d) = args.duration {
        if d.is_nan() || d <= 0.0 {
            bail!("--duration must be positive");
        }
    }
    let requests = if args.duration.is_some() { None } else { Some(args.requests.unwrap_or(16)) };
    if requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let all = dataset::load(args.prompts.as_deref())?;
    Draw::new(&all, args.workload.name(), args.seed, args.repeat_prompts)?; // the bucket exists
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let target = Target {
        url: args.url.trim_end_matches('/').to_string(),
        api_key: args.api_key.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;

    // Ctrl-C: stop starting requests, cancel those in flight, write what was collected. A second one exits at once.
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: writing what was collected (Ctrl-C again to quit at once)");
            let _ = cancel_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let pb = match requests {
        Some(n) => {
            let pb = ProgressBar::new(n * points.len() as u64);
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} {msg}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} requests {msg}").unwrap());
            pb
        }
    };
    pb.enable_steady_tick(Duration::from_millis(200));

    let records: Arc<Mutex<Vec<RequestRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let run_start = unix_s();
    let errors = Arc::new(AtomicU64::new(0));
    for &conc in &points {
        if *cancel_rx.borrow() {
            break;
        }
        let draw = Arc::new(Mutex::new(Draw::new(&all, args.workload.name(), args.seed, args.repeat_prompts)?));
        let issued = Arc::new(AtomicU64::new(0));
        let point_start = Instant::now();
        let deadline = args.duration.map(|d| point_start + Duration::from_secs_f64(d));
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (draw, issued, records, errors) = (draw.clone(), issued.clone(), records.clone(), errors.clone());
            let (client, target, pb, args) = (client.clone(), target.clone(), pb.clone(), args.clone());
            let mut cancel = cancel_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    if *cancel.borrow() || deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let i = issued.fetch_add(1, Ordering::SeqCst);
                    if requests.is_some_and(|n| i >= n) {
                        break;
                    }
                    let prompt = draw.lock().unwrap().next_prompt();
                    let body = RouterGenerateRequest {
                        request: GenerateRequest {
                            prompt: prompt.prompt.clone(),
                            max_tokens: Some(args.max_tokens),
                            temp: Some(args.temp),
                            seed: args.repeat_prompts.map(|_| args.seed),
                            stream: Some(true),
                            ..Default::default()
                        },
                        routing: Routing {
                            prefer_backend: Some(args.prefer_backend.into()),
                            model: args.model.clone(),
                            semantic_cache: args.semantic_cache.then_some(true),
                            cost_weight: args.cost_weight,
                        },
                    };
                    let mut rec = RequestRecord {
                        workload: args.workload.name().to_string(),
                        concurrency: conc,
                        prompt_id: prompt.id.clone(),
                        ..Default::default()
                    };
                    let after = tokio::select! {
                        a = run_one(&client, &target, &body, point_start, &mut rec) => a,
                        _ = cancel.wait_for(|c| *c) => {
                            rec.status = STATUS_CANCELLED.into();
                            rec.error = "interrupted".into();
                            After::Continue
                        }
                    };
                    if !rec.ok() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    records.lock().unwrap().push(rec);
                    pb.inc(1);
                    pb.set_message(format!("c={conc} errors={}", errors.load(Ordering::Relaxed)));
                    if let After::Wait(d) = after {
                        let d = match deadline {
                            Some(dl) => d.min(dl.saturating_duration_since(Instant::now())),
                            None => d,
                        };
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = cancel.wait_for(|c| *c) => {}
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Written after every point, so a crash or kill later still leaves the earlier points.
        record::write_csv(&args.out.join("requests.csv"), &records.lock().unwrap())?;
    }
    let run_end = unix_s();
    pb.finish_and_clear();

    let records = records.lock().unwrap().clone();
    record::write_csv(&args.out.join("requests.csv"), &records)?;
    let measured: Vec<RequestRecord> = records.iter().filter(|r| r.status != STATUS_CANCELLED).cloned().collect();
    let rows = stats::summarize(&measured);
    record::write_csv(&args.out.join("summary.csv"), &rows)?;
    let outcomes = stats::outcomes(&records);
    record::write_csv(&args.out.join("outcomes.csv"), &outcomes)?;

    let mut meta = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "url": target.url,
        "workload": args.workload.name(),
        "concurrency_points": points,
        "requests_per_point": requests,
        "duration_s_per_point": args.duration,
        "prefer_backend": format!("{:?}", args.prefer_backend).to_lowercase(),
        "model": args.model,
        "max_tokens": args.max_tokens,
        "timeout_s": args.timeout,
        "temp": args.temp,
        "seed": args.seed,
        "repeat_prompts": args.repeat_prompts,
        "semantic_cache": args.semantic_cache,
        "prompt_set": args.prompts.as_ref().map_or("builtin:datasets/prompts/loadtest.jsonl".to_string(), |p| p.display().to_string()),
        "start_unix_s": run_start,
        "end_unix_s": run_end,
        "requests": records.len(),
        "cancelled": records.len() - measured.len(),
        "interrupted": *cancel_rx.borrow(),
    });

    println!("{}", stats::table(&rows));
    for o in &outcomes {
        println!(
            "outcome {:<16} http {:>3}: {:>5} (fell back {}, got tokens {}){}",
            o.status,
            o.http_status,
            o.count,
            o.fell_back,
            o.got_tokens,
            if o.example_error.is_empty() { String::new() } else { format!(" e.g. {:?}", o.example_error) }
        );
    }
    println!("results in {}", args.out.display());

    if let Some(p) = &args.prometheus {
        let mut queries: Vec<(String, String)> =
            prom::DEFAULT_QUERIES.iter().map(|(n, q)| (n.to_string(), q.to_string())).collect();
        for q in &args.prom_queries {
            let Some((n, e)) = q.split_once('=') else { bail!("--prom-query wants NAME=PROMQL, got {q:?}") };
            queries.push((n.trim().to_string(), e.trim().to_string()));
        }
        let (samples, summaries) = prom::read(&client, p, &queries, run_start, run_end).await;
        record::write_csv(&args.out.join("prometheus.csv"), &samples)?;
        record::write_csv(&args.out.join("prometheus_summary.csv"), &summaries)?;
        for s in &summaries {
            match (&s.mean, s.error.is_empty()) {
                (Some(m), _) => {
                    println!("prometheus {} {}: mean {m:.2}, max {:.2}", s.query, s.labels, s.max.unwrap_or(0.0))
                }
                _ => println!("prometheus {}: {}", s.query, s.error),
            }
        }
        meta["prometheus"] = serde_json::json!(p);
    }

    if !args.no_plots && !measured.is_empty() {
        let label = args.label.clone().unwrap_or_else(|| args.workload.name().to_string());
        match plots::draw_all(&args.out, &measured, &rows, &label, args.font.as_deref()) {
            Ok(files) => println!("{} figures written", files.len()),
            Err(e) => eprintln!("load_test: no figures: {e:#}"),
        }
    }
    std::fs::write(args.out.join("run.json"), serde_json::to_string_pretty(&meta)? + "\n")?;

    let ok = measured.iter().filter(|r| r.ok()).count();
    Ok(if ok == 0 && !measured.is_empty() { 2 } else { 0 })
}
