//! The semantic cache end to end: a real router with the real MiniLM embedder in front of a real
//! model service (gemma-3-270m). A paraphrase of an answered prompt gets that answer with
//! `X-Cache: SEMANTIC` and its similarity; a near miss, a sampled request, a request that turns
//! it off, other parameters and another tenant do not; the exact cache is unchanged.
mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn embedder_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../models/all-MiniLM-L6-v2").to_string()
}

fn ask(r: &Router, prompt: &str, extra: Value, headers: &[(&str, &str)]) -> Answer {
    let mut body = json!({ "prompt": prompt, "max_tokens": 6, "temp": 0, "chat": false });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = post(&format!("{}/generate", r.url()), &body.to_string(), headers);
    assert_eq!(a.status, 200, "{}", a.body);
    a
}

/// Asks `prompt` and waits until its answer is in the cache (it is stored after the response).
fn answered(r: &Router, prompt: &str, extra: Value, headers: &[(&str, &str)]) -> Answer {
    let first = ask(r, prompt, extra.clone(), headers);
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"), "{prompt:?} was answered before");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask(r, prompt, extra.clone(), headers).header("x-cache").as_deref() != Some("HIT") {
        assert!(Instant::now() < deadline, "the answer to {prompt:?} never reached the cache");
        std::thread::sleep(Duration::from_millis(50));
    }
    first
}

fn x_cache(a: &Answer) -> String {
    a.header("x-cache").unwrap_or_default()
}

#[test]
fn a_paraphrase_gets_the_cached_answer_and_a_near_miss_does_not() {
    let m1 = gemma();
    let r = Router::start(
        &[("m1", m1.url())],
        &[("SEMANTIC_CACHE", "1".into()), ("EMBEDDER_DIR", embedder_dir())],
        &["m1"],
    );
    let original = answered(&r, "What is the capital of France?", json!({}), &[]);

    let para = ask(&r, "Tell me the capital city of France.", json!({}), &[]);
    assert_eq!(x_cache(&para), "SEMANTIC", "{:?}", para.names());
    assert_eq!(para.text(), original.text(), "a semantic hit replays the stored answer");
    let route = para.event("route").unwrap();
    assert_eq!(route["cache"], "semantic");
    let sim = route["similarity"].as_f64().unwrap();
    assert!((0.85..=1.0).contains(&sim), "similarity {sim}");
    assert_eq!(para.event("done").unwrap()["cache"], "semantic");
    let stats: Value = http().get(format!("{}/last_request_stats", r.url())).send().unwrap().json().unwrap();
    assert_eq!(stats["route"]["similarity"].as_f64(), Some(sim), "{stats}");

    // Near misses: another country, another number of tokens (another bucket).
    assert_eq!(x_cache(&ask(&r, "What is the capital of Spain?", json!({}), &[])), "MISS");
    assert_eq!(x_cache(&ask(&r, "Tell me the capital city of France.", json!({"max_tokens": 5}), &[])), "MISS");
    // Sampled answers are never shared, and a request may turn the semantic cache off.
    let sampled = ask(&r, "Tell me the capital city of France.", json!({"temp": 0.7}), &[]);
    assert_eq!(x_cache(&sampled), "MISS");
    let off = ask(&r, "Tell me the capital city of France.", json!({"semantic_cache": false}), &[]);
    assert_eq!(x_cache(&off), "MISS");
    // The exact cache as before.
    assert_eq!(x_cache(&ask(&r, "What is the capital of France?", json!({}), &[])), "HIT");
    // A wrong type is a 422 like any other field.
    let bad = post(&format!("{}/generate", r.url()), r#"{"prompt":"x","semantic_cache":"yes"}"#, &[]);
    assert_eq!(bad.status, 422, "{}", bad.body);

    let metrics = r.metrics();
    let hits = metrics.lines().find(|l| l.starts_with("router_semantic_cache_total{outcome=\"hit\"}")).unwrap();
    assert!(hits.ends_with(" 1"), "{hits}");
    assert!(metrics.contains("router_semantic_similarity_count"), "no similarity histogram");
}

#[test]
fn off_by_default_on_per_request_and_never_across_tenants_with_redis() {
    let m1 = gemma();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{}\"\n[[key]]\nname = \"b\"\nsha256 = \"{}\"\n",
            sha("key-a"),
            sha("key-b")
        ),
    )
    .unwrap();
    // This router keeps its answers in Redis (the one the test command installs), the other test's
    // in process: the semantic index points into either.
    let redis = Redis::start();
    let r = Router::start(
        &[("m1", m1.url())],
        &[("EMBEDDER_DIR", embedder_dir()), ("API_KEYS_FILE", keys.display().to_string()), ("REDIS_URL", redis.url())],
        &["m1"],
    );
    let a = [("authorization", "Bearer key-a")];
    let b = [("authorization", "Bearer key-b")];
    // Only answers of requests that use the semantic cache are indexed for it.
    answered(&r, "How many legs does a spider have?", json!({"semantic_cache": true}), &a);
    // Off unless asked for.
    assert_eq!(x_cache(&ask(&r, "How many legs does a spider have, please?", json!({}), &a)), "MISS");
    // Tenant b never gets tenant a's answer (each request below is new to the exact cache).
    let para = "A spider has how many legs?";
    assert_eq!(x_cache(&ask(&r, para, json!({"semantic_cache": true}), &b)), "MISS");
    // Tenant a does, when it asks for it.
    assert_eq!(x_cache(&ask(&r, para, json!({"semantic_cache": true}), &a)), "SEMANTIC");
    let metrics = r.metrics();
    assert!(metrics.contains("router_redis_errors_total 0"), "Redis errors:\n{metrics}");
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan", "--pattern", "polyllm:*"])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    assert!(keys.lines().count() >= 3, "the answers are not in Redis: {keys:?}");
}
