//! Integration tests: the real `inference` binary on the real gemma-3-270m (and, for chat,
//! qwen2.5-coder-0.5b) GGUF files.
mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

async fn post(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(url).json(&body).send().await.unwrap()
}

async fn post_raw(url: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn assert_error(resp: reqwest::Response, status: u16, what: &str) {
    assert_eq!(resp.status().as_u16(), status, "{what}");
    let v: Value = resp.json().await.unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    assert!(v["error"]["type"].as_str().is_some(), "{what}: {v}");
}

/// Health, greedy determinism, SSE framing, stop strings, metrics and bad input on one server.
#[tokio::test(flavor = "multi_thread")]
async fn gemma_serves_generate() {
    let s = Server::start(GEMMA, "m1", &["--context", "256"]).await;
    assert!(s.saw_loading, "/health never answered 503 loading before the model was ready");
    let health: Value = reqwest::get(format!("{}/health", s.url)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model_id"], "m1");
    assert_eq!(health["model"], "gemma-3-270m");
    assert_eq!(health["arch"], "gemma3");
    assert_eq!(health["device"], "cpu");

    let gen = format!("{}/generate", s.url);
    let ok_before = s.metric("model_requests_total{model_id=\"m1\",status=\"ok\"}").await;
    let toks_before = s.metric("model_tokens_generated_total").await;

    // Greedy output is deterministic, and the stream carries exactly the same text.
    let body = json!({"prompt": "def fibonacci(n):", "max_tokens": 16, "temp": 0, "stream": false});
    let a: Value = post(&gen, body.clone()).await.json().await.unwrap();
    let b: Value = post(&gen, body).await.json().await.unwrap();
    assert_eq!(a["text"], b["text"]);
    let text = a["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{a}");
    assert_eq!(a["completion_tokens"], 16, "{a}");
    assert_eq!(a["finish_reason"], "length");
    assert_eq!(a["device"], "cpu");
    assert!(a["prompt_tokens"].as_u64().unwrap() >= 5);
    assert!(a["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(a["latency_ms"].as_f64().unwrap() >= a["ttft_ms"].as_f64().unwrap());

    let resp = post(&gen, json!({"prompt": "def fibonacci(n):", "max_tokens": 16, "temp": 0})).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_events(resp).await;
    let (last, tokens) = events.split_last().expect("no events");
    assert_eq!(last.event, "done");
    assert!(tokens.iter().all(|e| e.event == "token"), "{events:?}");
    assert!(tokens.len() >= 2, "expected several token events, got {}", tokens.len());
    let streamed: String = tokens
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);
    let done: Value = serde_json::from_str(&last.data).unwrap();
    for field in [
        "model_id",
        "model",
        "device",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "ttft_ms",
        "latency_ms",
        "tokens_per_second",
    ] {
        assert!(!done[field].is_null(), "done lacks {field}: {done}");
    }

    // A stop string cuts the output before it.
    let cut_at: String = text.chars().skip(3).take(3).collect();
    let r: Value = post(
        &gen,
        json!({"prompt": "def fibonacci(n):", "max_tokens": 16, "temp": 0, "stop": [cut_at.clone()], "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["finish_reason"], "stop_sequence", "{r}");
    let expected = &text[..text.find(&cut_at).unwrap()];
    assert_eq!(r["text"], expected);

    // Seeded sampling is reproducible.
    let sampled = json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 5, "chat": false, "stream": false});
    let x: Value = post(&gen, sampled.clone()).await.json().await.unwrap();
    let y: Value = post(&gen, sampled).await.json().await.unwrap();
    assert_eq!(x["text"], y["text"]);

    // Metrics moved.
    let ok_after = s.metric("model_requests_total{model_id=\"m1\",status=\"ok\"}").await;
    assert_eq!(ok_after - ok_before, 6.0);
    assert!(s.metric("model_tokens_generated_total").await - toks_before >= 60.0);
    assert!(s.metric("model_time_to_first_token_seconds_count").await >= 6.0);
    assert!(s.metric("model_prompt_tokens_total").await > 0.0);

    // Bad input: clear 4xx JSON errors, and the server stays up.
    assert_error(post_raw(&gen, "{not json").await, 400, "invalid JSON").await;
    assert_error(post_raw(&gen, r#"{"max_tokens": 4}"#).await, 422, "missing prompt").await;
    assert_error(post(&gen, json!({"prompt": ""})).await, 400, "empty prompt").await;
    assert_error(post(&gen, json!({"prompt": 42})).await, 422, "prompt of the wrong type").await;
    assert_error(post(&gen, json!({"prompt": "x", "max_tokens": "ten"})).await, 422, "max_tokens of the wrong type")
        .await;
    assert_error(post(&gen, json!({"prompt": "x", "max_tokens": 0})).await, 400, "max_tokens 0").await;
    assert_error(post(&gen, json!({"prompt": "x", "max_tokens": 100000})).await, 400, "max_tokens beyond the context")
        .await;
    assert_error(post(&gen, json!({"prompt": "x", "temp": -1})).await, 400, "negative temperature").await;
    assert_error(post(&gen, json!({"prompt": "x", "top_p": 2})).await, 400, "top_p above 1").await;
    assert_error(
        post(&gen, json!({"prompt": "word ".repeat(400), "max_tokens": 4})).await,
        400,
        "prompt longer than the context",
    )
    .await;
    assert_error(post(&gen, json!({"prompt": "x", "chat": true})).await, 400, "chat on a model without a template")
        .await;
    assert_error(reqwest::Client::new().post(&gen).body("{}").send().await.unwrap(), 400, "no content type").await;
    assert_error(reqwest::get(format!("{}/nope", s.url)).await.unwrap(), 404, "unknown path").await;
    let health = reqwest::get(format!("{}/health", s.url)).await.unwrap();
    assert_eq!(health.status(), 200, "server died after bad input");
    assert!(s.metric("model_requests_total{model_id=\"m1\",status=\"client_error\"}").await >= 11.0);
}

/// With one slot and no queue, a second request is refused with 503 + Retry-After; a client that
/// disconnects mid-stream frees its slot at once.
#[tokio::test(flavor = "multi_thread")]
async fn disconnect_frees_the_slot_and_full_queue_is_503() {
    let s = Server::start(GEMMA, "m1", &["--max-concurrent", "1", "--max-queue", "0"]).await;
    let gen = format!("{}/generate", s.url);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 1000, "temp": 0, "chat": false});
    let resp = post(&gen, long.clone()).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: token"));

    let busy = post(&gen, json!({"prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_error(busy, 503, "queue full").await;
    assert_eq!(s.metric("model_in_flight").await, 1.0);
    let health: Value = reqwest::get(format!("{}/health", s.url)).await.unwrap().json().await.unwrap();
    assert_eq!(health["batch"], json!({"size": 1, "free": 0, "queued": 0}), "{health}");

    drop(body); // the client goes away mid-stream
    let t0 = Instant::now();
    loop {
        if s.metric("model_in_flight").await == 0.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the slot was not freed after the client disconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.metric("model_requests_total{model_id=\"m1\",status=\"cancelled\"}").await, 1.0);
    let r = post(&gen, json!({"prompt": "hi", "max_tokens": 2, "stream": false})).await;
    assert_eq!(r.status(), 200, "the freed slot did not take a new request");
}

/// The service's listener bounds idle, slow and oversized clients like the router's (the shared
/// accept loop): connections over `--max-connections` get a JSON 503, idle ones are closed at the
/// header deadline, and a huge header block gets 431.
#[tokio::test(flavor = "multi_thread")]
async fn idle_slow_and_huge_clients_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let s = Server::start(GEMMA, "m1", &["--max-connections", "20", "--header-read-timeout-ms", "5000"]).await;
    async fn read_all(c: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out))
            .await
            .expect("the server closed the connection");
        String::from_utf8_lossy(&out).into_owned()
    }
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(("127.0.0.1", s.port)).await.unwrap());
    }
    // Once the service has taken in the 20 idle connections, a new one is refused. (A probe that
    // still got a slot is closed by us at once, freeing it, and we try again.)
    let t0 = Instant::now();
    let answer = loop {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = read_all(&mut c).await;
        if answer.starts_with("HTTP/1.1 503") || t0.elapsed() > Duration::from_secs(4) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""type":"overloaded""#), "{answer}");
    // The idle connections are closed by the server at the header deadline; then it serves again.
    let t0 = Instant::now();
    for mut c in idle {
        read_all(&mut c).await;
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let _ = c.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(read_all(&mut c).await.starts_with("HTTP/1.1 431"));
    let r = reqwest::get(format!("{}/health", s.url)).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The instruct model stops at its end-of-turn token, and answers a chat question sensibly.
#[tokio::test(flavor = "multi_thread")]
async fn qwen_chat_stops_at_end_of_turn() {
    let s = Server::start(QWEN05, "m2", &[]).await;
    let r: Value = post(
        &format!("{}/generate", s.url),
        json!({"prompt": "What is the capital of France? Answer in one word.", "max_tokens": 48, "temp": 0, "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["finish_reason"], "stop", "{r}");
    assert!(r["completion_tokens"].as_u64().unwrap() < 48);
    assert!(r["text"].as_str().unwrap().contains("Paris"), "{r}");
    assert!(!r["text"].as_str().unwrap().contains("<|im_end|>"));
}

/// The official `openai` Python client, streaming and not, on both endpoints.
#[tokio::test(flavor = "multi_thread")]
async fn openai_python_client() {
    let s = Server::start(QWEN05, "m2", &[]).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", s.url))
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

/// A truncated file and an unknown architecture fail at start with a message naming the file;
/// `--device cuda` without CUDA support fails clearly.
#[test]
fn bad_model_files_fail_at_start() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.gguf");
    let mut src = std::fs::File::open(model(GEMMA)).unwrap();
    let mut head = vec![0u8; 20 << 20];
    src.read_exact(&mut head).unwrap();
    std::fs::File::create(&truncated).unwrap().write_all(&head).unwrap();
    let out = std::process::Command::new(bin())
        .args(["--model", truncated.to_str().unwrap(), "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated") && err.contains("truncated.gguf"), "{err}");

    // A tiny GGUF with an architecture we do not serve.
    let odd = dir.path().join("mamba.gguf");
    {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let t = QTensor::quantize(
            &candle_core::Tensor::zeros((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let arch = gguf_file::Value::String("mamba".into());
        let mut f = std::fs::File::create(&odd).unwrap();
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("w", &t)]).unwrap();
    }
    let out =
        std::process::Command::new(bin()).args(["--model", odd.to_str().unwrap(), "--port", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported architecture") && err.contains("mamba.gguf"), "{err}");

    if !cfg!(feature = "cuda") {
        let out = std::process::Command::new(bin())
            .args(["--model", model(GEMMA).to_str().unwrap(), "--device", "cuda", "--port", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without CUDA support"), "{err}");
    }
}
