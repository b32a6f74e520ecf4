//! Starting the real `inference` binary for integration tests: free ports, readiness, cleanup.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn models_dir() -> PathBuf {
    std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The path of a model file; panics with the fix when it is missing (tests never skip silently).
pub fn model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: run `cargo run --release -p polyllm-fetch --bin fetch-models` (the test command does this)",
        p.display()
    );
    p
}

pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
pub const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const QWEN15: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `inference` process, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub url: String,
    /// Whether a `503 loading` answer was seen before the first 200 from /health.
    pub saw_loading: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_inference")
}

impl Server {
    /// Starts the binary on `model_file` with `extra` flags and waits until /health is 200.
    pub async fn start(model_file: &str, id: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let model = model(model_file);
        let mut args: Vec<String> = vec![
            "--model".into(),
            model.display().to_string(),
            "--model-id".into(),
            id.into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(bin())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn inference");
        let url = format!("http://127.0.0.1:{port}");
        let mut server = Server { child, port, url, saw_loading: false };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("inference exited during start-up: {status}");
            }
            if let Ok(r) = client.get(format!("{}/health", server.url)).send().await {
                if r.status() == 200 {
                    return server;
                }
                assert_eq!(r.status(), 503);
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["status"], "loading");
                server.saw_loading = true;
            }
            assert!(Instant::now() < deadline, "inference did not become healthy in time");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn metric(&self, needle: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {needle} not found in:\n{text}"))
    }
}

/// Reads an SSE response to the end and returns its events.
pub async fn sse_events(resp: reqwest::Response) -> Vec<polyllm_common::sse::SseEvent> {
    use futures::StreamExt;
    let mut parser = polyllm_common::sse::SseParser::new();
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        out.extend(parser.push(&chunk.unwrap()));
    }
    out
}
