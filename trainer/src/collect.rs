//! `trainer collect`: every prompt of the set to every model, straight to the backends (not through
//! the router, so the cache and the policy play no part), appended to a JSONL file of
//! [`ResponseRow`]s. Resumable: pairs (prompt, backend) already in the file are skipped. Also
//! ingests the router's response logs (`--response-log-dir` of the router) into the same format.
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use polyllm_common::catalog::BackendSpec;
use polyllm_common::wire::{GenerateRequest, GenerateResponse, StopSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::{Category, PromptRecord};

/// One model's answer to one prompt: a line of the responses file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRow {
    pub prompt_id: String,
    /// The model name (`qwen2.5-coder-1.5b-instruct`), which is what the router model predicts.
    pub model: String,
    /// The backend that answered (`m3`).
    pub backend: String,
    #[serde(default)]
    pub device: String,
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub ttft_ms: f64,
    pub latency_ms: f64,
    #[serde(default)]
    pub finish_reason: String,
    #[serde(default)]
    pub max_tokens: u32,
    /// `collect` or `router_log`.
    #[serde(default)]
    pub source: String,
}

/// Read a responses file (missing file = empty). Lines that do not parse are errors with their number.
pub fn read_responses(path: &Path) -> Result<Vec<ResponseRow>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // A crash mid-write can leave a torn last line; it is reported and skipped (collect redoes it).
        match serde_json::from_str::<ResponseRow>(&line) {
            Ok(r) => rows.push(r),
            Err(e) => tracing::warn!(line = i + 1, error = %e, "skipping an unreadable line of {}", path.display()),
        }
    }
    Ok(rows)
}

/// What to collect and where.
pub struct CollectPlan {
    pub prompts: Vec<PromptRecord>,
    pub backends: Vec<BackendSpec>,
    pub out: PathBuf,
    pub concurrency: usize,
    pub timeout: Duration,
    pub retries: u32,
}

/// Outcome counts of one `collect` run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CollectSummary {
    pub skipped_done: usize,
    pub collected: usize,
    pub failed: usize,
}

/// Appends rows to the output file, one flushed line at a time, so a kill loses at most one line.
struct Appender {
    file: std::fs::File,
}

impl Appender {
    fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }

    fn append(&mut self, row: &ResponseRow) -> Result<()> {
        let mut line = serde_json::to_string(row)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }
}

/// Stop strings sent with every collected request, the same for every model: code ends at the
/// closing fence of its block (the prose after it is never scored), and short answers end at the
/// first blank line (a base model would otherwise ramble on to `max_tokens`).
pub fn stops_for(category: Category) -> Vec<String> {
    match category {
        Category::Code => vec!["\n```\n".to_string()],
        _ => vec!["\n\n".to_string()],
    }
}

/// Ask one backend for one answer: greedy, non-streaming `/generate` (its stats carry TTFT and latency).
async fn ask(
    client: &reqwest::Client,
    backend: &BackendSpec,
    p: &PromptRecord,
    timeout: Duration,
) -> Result<ResponseRow> {
    let req = GenerateRequest {
        prompt: p.prompt.clone(),
        max_tokens: Some(p.max_tokens),
        temp: Some(0.0),
        seed: Some(0),
        stop: Some(StopSpec::Many(stops_for(p.category))),
        stream: Some(false),
        ..Default::default()
    };
    let url = format!("{}/generate", backend.base_url());
    let resp = client.post(&url).json(&req).timeout(timeout).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("{} answered {status}: {}", backend.id, body.chars().take(300).collect::<String>());
    }
    let g: GenerateResponse = resp.json().await.with_context(|| format!("decoding {}'s answer", backend.id))?;
    Ok(ResponseRow {
        prompt_id: p.id.clone(),
        model: g.stats.model.clone(),
        backend: backend.id.clone(),
        device: g.stats.device.clone(),
        text: g.text,
        prompt_tokens: g.stats.prompt_tokens,
        completion_tokens: g.stats.completion_tokens,
        ttft_ms: g.stats.ttft_ms,
        latency_ms: g.stats.latency_ms,
        finish_reason: serde_json::to_value(g.stats.finish_reason)?.as_str().unwrap_or_default().to_string(),
        max_tokens: p.max_tokens,
        source: "collect".into(),
    })
}

/// Check that every backend answers `/health` with 200 before spending hours on a run.
pub async fn check_backends(client: &reqwest::Client, backends: &[BackendSpec]) -> Result<()> {
    for b in backends {
        let url = format!("{}/health", b.base_url());
        let r = client.get(&url).timeout(Duration::from_secs(5)).send().await;
        match r {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => bail!("backend {} at {url} is not ready ({})", b.id, r.status()),
            Err(e) => bail!(
                "backend {} at {url} is unreachable: {e}. Start it first (`polyllm up --backends {}`)",
                b.id,
                b.id
            ),
        }
    }
    Ok(())
}

/// Run the plan: each backend answers the prompts in file order, so a run stopped at any point
/// leaves a prefix of the set complete for every model.
pub async fn collect(plan: CollectPlan) -> Result<CollectSummary> {
    let done: HashSet<(String, String)> =
        read_responses(&plan.out)?.into_iter().map(|r| (r.prompt_id, r.backend)).collect();
    let client = reqwest::Client::builder().build()?;
    check_backends(&client, &plan.backends).await?;

    // One lane per backend, each walking the prompts in order with `concurrency` requests in
    // flight: backends never queue behind each other, and a slow model does not hold back a fast one.
    let mut lanes: Vec<Vec<&PromptRecord>> = vec![Vec::new(); plan.backends.len()];
    let mut summary = CollectSummary::default();
    for p in &plan.prompts {
        for (lane, b) in lanes.iter_mut().zip(&plan.backends) {
            if done.contains(&(p.id.clone(), b.id.clone())) {
                summary.skipped_done += 1;
            } else {
                lane.push(p);
            }
        }
    }
    let total: usize = lanes.iter().map(Vec::len).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} answers  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let appender = Arc::new(Mutex::new(Appender::open(&plan.out)?));
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let lane_runs = lanes.into_iter().zip(&plan.backends).map(|(lane, b)| {
        let (client, appender, counts, bar) = (&client, appender.clone(), counts.clone(), bar.clone());
        let (timeout, retries, concurrency) = (plan.timeout, plan.retries, plan.concurrency.max(1));
        stream::iter(lane).for_each_concurrent(concurrency, move |p| {
            let (appender, counts, bar) = (appender.clone(), counts.clone(), bar.clone());
            async move {
                let mut attempt = 0;
                let result = loop {
                    match ask(client, b, p, timeout).await {
                        Ok(row) => break Ok(row),
                        Err(e) if attempt < retries => {
                            attempt += 1;
                            tracing::warn!(prompt = %p.id, backend = %b.id, error = %format!("{e:#}"), "retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => break Err(e),
                    }
                };
                match result {
                    Ok(row) => {
                        bar.set_message(format!("{} {} {:.0} ms", p.id, b.id, row.latency_ms));
                        let wrote = appender.lock().map_err(|_| anyhow::anyhow!("appender poisoned")).and_then(|mut a| a.append(&row));
                        let mut c = counts.lock().expect("counts");
                        match wrote {
                            Ok(()) => c.0 += 1,
                            Err(e) => {
                                c.1 += 1;
                                tracing::error!(error = %format!("{e:#}"), "could not append a response");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(prompt = %p.id, backend = %b.id, error = %format!("{e:#}"), "giving up on this pair");
                        counts.lock().expect("counts").1 += 1;
                    }
                }
                bar.inc(1);
            }
        })
    });
    futures::future::join_all(lane_runs).await;
    bar.finish();
    let (collected, failed) = *counts.lock().expect("counts");
    summary.collected = collected;
    summary.failed = failed;
    Ok(summary)
}

/// Turn the router's response logs (`responses-*.jsonl` in its `--response-log-dir`) into rows.
/// A logged prompt that is in the prompt set gets that prompt's id (so it can be scored); any other
/// gets `log-<sha256 prefix>`. Entries logged without text, cache hits and duplicates are skipped.
pub fn ingest_router_logs(dir: &Path, prompts: &[PromptRecord], out: &Path) -> Result<CollectSummary> {
    let by_text: HashMap<&str, &str> = prompts.iter().map(|p| (p.prompt.as_str(), p.id.as_str())).collect();
    let mut done: HashSet<(String, String, String)> =
        read_responses(out)?.into_iter().map(|r| (r.prompt_id, r.backend, r.text)).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut appender = Appender::open(out)?;
    let mut summary = CollectSummary::default();
    for f in files {
        let reader = BufReader::new(std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?);
        for line in reader.lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                summary.failed += 1;
                continue;
            };
            let (Some(prompt), Some(text)) = (v["prompt"].as_str(), v["text"].as_str()) else {
                summary.skipped_done += 1;
                continue;
            };
            let backend = v["backend"].as_str().unwrap_or_default().to_string();
            if backend.is_empty() || v["policy"].as_str() == Some("cache") {
                summary.skipped_done += 1;
                continue;
            }
            let id = by_text
                .get(prompt)
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("log-{}", &hex::encode(Sha256::digest(prompt.as_bytes()))[..12]));
            if !done.insert((id.clone(), backend.clone(), text.to_string())) {
                summary.skipped_done += 1;
                continue;
            }
            let row = ResponseRow {
                prompt_id: id,
                model: v["model"].as_str().unwrap_or_default().to_string(),
                backend,
                device: v["device"].as_str().unwrap_or_default().to_string(),
                text: text.to_string(),
                prompt_tokens: v["prompt_tokens"].as_u64().unwrap_or(0) as u32,
                completion_tokens: v["tokens"].as_u64().unwrap_or(0) as u32,
                ttft_ms: v["ttft_ms"].as_f64().unwrap_or(0.0),
                latency_ms: v["backend_latency_ms"].as_f64().or(v["latency_ms"].as_f64()).unwrap_or(0.0),
                finish_reason: v["finish_reason"].as_str().unwrap_or_default().to_string(),
                max_tokens: v["params"]["max_tokens"].as_u64().unwrap_or(0) as u32,
                source: "router_log".into(),
            };
            appender.append(&row)?;
            summary.collected += 1;
        }
    }
    Ok(summary)
}

/// Ids of prompts answered by every one of `backends` (the rows a training run can use).
pub fn complete_prompts(rows: &[ResponseRow], backends: &[String]) -> HashSet<String> {
    let mut by_prompt: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in rows {
        by_prompt.entry(&r.prompt_id).or_default().insert(&r.backend);
    }
    by_prompt
        .into_iter()
        .filter(|(_, got)| backends.iter().all(|b| got.contains(b.as_str())))
        .map(|(p, _)| p.to_string())
        .collect()
}
