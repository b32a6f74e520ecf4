//! The service's continuous batching, end to end on the real gemma-3-270m: concurrent requests
//! decode in one batch and answer exactly what each answers alone; a long prompt that arrives
//! while a stream runs is read in chunks between that stream's tokens; `/health` and `/metrics`
//! report the batch.
mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

async fn generate(url: &str, prompt: &str, max_tokens: u32) -> Value {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": false, "chat": false});
    let r = reqwest::Client::new().post(format!("{url}/generate")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_the_batch_and_answer_as_alone() {
    let s = Server::start(GEMMA, "m1", &["--max-concurrent", "4"]).await;
    let health: Value = reqwest::get(format!("{}/health", s.url)).await.unwrap().json().await.unwrap();
    assert_eq!(health["batch"], json!({"size": 4, "free": 4, "queued": 0}), "{health}");
    assert_eq!(s.metric("model_batch_size").await, 4.0);

    let prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a fox", "1, 2, 3, 4,"];
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(generate(&s.url, p, 24).await["text"].as_str().unwrap().to_string());
    }
    let steps_alone = s.metric("model_decode_batch_tokens_count").await;
    let tokens_alone = s.metric("model_decode_batch_tokens_sum").await;
    assert_eq!(steps_alone, tokens_alone, "requests one after another decode one sequence per step");

    let together = futures::future::join_all(prompts.iter().map(|p| generate(&s.url, p, 24))).await;
    for (i, v) in together.iter().enumerate() {
        assert_eq!(v["text"].as_str().unwrap(), alone[i], "prompt {i} answered differently in the batch");
    }
    let steps = s.metric("model_decode_batch_tokens_count").await - steps_alone;
    let tokens = s.metric("model_decode_batch_tokens_sum").await - tokens_alone;
    assert!(tokens / steps >= 2.0, "the concurrent requests were not batched: {tokens} tokens in {steps} steps");
    assert_eq!(s.metric("model_batch_occupancy").await, 0.0);
    assert_eq!(s.metric("model_requests_total{model_id=\"m1\",status=\"ok\"}").await, 8.0);
}

/// A 500-token prompt arriving mid-stream is read 64 tokens a step, the running stream decoding a
/// token between chunks: it keeps receiving tokens while the long prompt is read, instead of
/// waiting for the whole prompt.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_prompt_is_read_between_the_running_streams_tokens() {
    let s = Server::start(GEMMA, "m1", &["--max-concurrent", "2", "--prefill-chunk", "64"]).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "chat": false});
    let resp = reqwest::Client::new().post(format!("{}/generate", s.url)).json(&body).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let tokens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = tokens.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(chunk)) = stream.next().await {
            let text = String::from_utf8_lossy(&chunk).to_string();
            counter.fetch_add(text.matches("event: token").count(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Wait until the stream runs.
    let t0 = Instant::now();
    while tokens.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the stream did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(50);
    let before = tokens.load(std::sync::atomic::Ordering::SeqCst);
    let body = json!({"prompt": long, "max_tokens": 1, "temperature": 0, "stream": false, "chat": false});
    let r: Value = reqwest::Client::new()
        .post(format!("{}/generate", s.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let during = tokens.load(std::sync::atomic::Ordering::SeqCst) - before;
    let prompt_tokens = r["prompt_tokens"].as_u64().unwrap_or_else(|| panic!("{r}"));
    assert!(prompt_tokens >= 448, "the long prompt has {prompt_tokens} tokens");
    // ceil(prompt / 64) chunks, each followed by a decode step of the running stream.
    let chunks = prompt_tokens.div_ceil(64) as usize;
    assert!(
        during + 1 >= chunks,
        "the running stream got {during} tokens while a {prompt_tokens}-token prompt was read in {chunks} chunks"
    );
    reader.abort();
}
