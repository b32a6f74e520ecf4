//! End-to-end tests of the router binary against real processes: redis-server, the inference
//! service on gemma-3-270m (and qwen2.5-coder-0.5b for chat), and the stub backend standing in
//! for a GPU. Every test picks free ports and kills its children.
mod common;

use common::*;
use polyllm_common::sse::SseParser;
use serde_json::Value;
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

fn gen_url(r: &Router) -> String {
    format!("{}/generate", r.url())
}

fn assert_error_shape(a: &Answer) {
    let v = a.json();
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {}", a.body));
    assert!(!msg.is_empty());
    assert!(v["error"]["type"].as_str().is_some_and(|t| !t.is_empty()), "no error.type in {}", a.body);
}

#[test]
fn bad_inputs_are_rejected_with_error_bodies() {
    // No backend is ever reached: validation comes first.
    let r = Router::start(
        &[("m1", "http://127.0.0.1:9".into())],
        &[("MAX_BODY_BYTES", "2000".into()), ("MAX_PROMPT_CHARS", "100".into()), ("RATE_LIMIT_RPS", "0".into())],
        &[],
    );
    let long_prompt = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(101));
    let huge_body = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(3000));
    let cases: Vec<(&str, &str, u16)> = vec![
        ("invalid JSON", "{", 400),
        ("not an object", "[]", 422),
        ("missing prompt", "{}", 422),
        ("prompt of wrong type", r#"{"prompt": 3}"#, 422),
        ("max_tokens of wrong type", r#"{"prompt": "x", "max_tokens": "4"}"#, 422),
        ("negative max_tokens", r#"{"prompt": "x", "max_tokens": -1}"#, 422),
        ("empty prompt", r#"{"prompt": ""}"#, 400),
        ("max_tokens 0", r#"{"prompt": "x", "max_tokens": 0}"#, 400),
        ("negative temp", r#"{"prompt": "x", "temp": -0.5}"#, 400),
        ("top_p out of range", r#"{"prompt": "x", "top_p": 1.5}"#, 400),
        ("unknown prefer_backend", r#"{"prompt": "x", "prefer_backend": "tpu"}"#, 400),
        ("prompt too long", &long_prompt, 400),
        ("body too large", &huge_body, 413),
        ("unknown model", r#"{"prompt": "x", "model": "nope"}"#, 404),
        ("no healthy backend", r#"{"prompt": "x"}"#, 503),
    ];
    for (what, body, status) in &cases {
        let a = post(&gen_url(&r), body, &[]);
        assert_eq!(a.status, *status, "{what}: {}", a.body);
        assert_error_shape(&a);
        assert!(a.header("x-request-id").is_some(), "{what}: no X-Request-Id");
    }
    let a = post(&format!("{}/v1/chat/completions", r.url()), r#"{"model":"auto","messages":[]}"#, &[]);
    assert_eq!(a.status, 400, "{}", a.body);
    assert_error_shape(&a);
    let a = post(&format!("{}/v1/completions", r.url()), r#"{"prompt":"x","n":2}"#, &[]);
    assert_eq!(a.status, 400, "{}", a.body);
    let a = post(&format!("{}/v1/completions", r.url()), r#"{"prompt":"x","temperature":"hot"}"#, &[]);
    assert_eq!(a.status, 422, "{}", a.body);
    let m = r.metrics();
    assert_eq!(metric_sum(&m, "router_requests_total{status=\"400\"}"), 7.0 + 2.0, "{m}");
    assert_eq!(metric_sum(&m, "router_requests_total{status=\"422\"}"), 6.0, "{m}");
}

#[test]
fn serves_the_ui_health_models_and_metrics() {
    let ui = tempfile::tempdir().unwrap();
    std::fs::write(ui.path().join("index.html"), "<html>polyllm ui</html>").unwrap();
    std::fs::create_dir(ui.path().join("assets")).unwrap();
    std::fs::write(ui.path().join("assets/app.js"), "console.log(1)").unwrap();
    let r = Router::start(&[("m1", "http://127.0.0.1:9".into())], &[("UI_DIR", ui.path().display().to_string())], &[]);
    let c = http();
    assert_eq!(c.get(r.url()).send().unwrap().text().unwrap(), "<html>polyllm ui</html>");
    assert_eq!(c.get(format!("{}/assets/app.js", r.url())).send().unwrap().text().unwrap(), "console.log(1)");
    let health: Value = c.get(format!("{}/health", r.url())).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "degraded", "no healthy backend: {health}");
    assert_eq!(health["redis"], "disabled");
    assert_eq!(health["cache"], "memory");
    let models: Value = c.get(format!("{}/v1/models", r.url())).send().unwrap().json().unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "auto");
    let m = c.get(format!("{}/metrics", r.url())).send().unwrap();
    assert!(m.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = m.text().unwrap();
    for name in [
        "router_cache_hits_total",
        "router_rate_limited_total",
        "router_redis_errors_total",
        "router_cache_misses_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let last = c.get(format!("{}/last_request_stats", r.url())).send().unwrap();
    assert_eq!(last.status().as_u16(), 404, "no request yet");
}

#[test]
fn cache_miss_then_hit_without_touching_the_backend() {
    let b = gemma();
    // Between the router and the backend: counts every request the router sends.
    let proxy = CountingProxy::start(b.port);
    let logs = tempfile::tempdir().unwrap();
    let r = Router::start(
        &[("m1", proxy.url())],
        &[("RESPONSE_LOG_DIR", logs.path().display().to_string()), ("FIRST_TOKEN_TIMEOUT_MS", "120000".into())],
        &["m1"],
    );
    let body = r#"{"prompt":"The capital of France is","max_tokens":8,"temp":0}"#;

    let miss = post(&gen_url(&r), body, &[]);
    assert_eq!(miss.status, 200, "{}", miss.body);
    assert_eq!(miss.header("x-cache").as_deref(), Some("MISS"));
    let names = miss.names();
    assert_eq!(names.first().map(String::as_str), Some("route"), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("done"), "{names:?}");
    assert!(names[1..names.len() - 1].iter().all(|n| n == "token") && names.len() > 2, "{names:?}");
    let route = miss.event("route").unwrap();
    assert_eq!(route["cache"], "miss");
    assert_eq!(route["backend"], "m1");
    assert_eq!(route["model"], "gemma-3-270m");
    assert_eq!(route["device"], "cpu");
    assert_eq!(route["request_id"].as_str(), miss.header("x-request-id").as_deref());
    assert!(route["confidence"].is_number() && route["probabilities"]["gemma-3-270m"].is_number());
    assert!(route["reason"].as_str().unwrap().contains("smallest"), "{route}");
    let done = miss.event("done").unwrap();
    for k in ["routing_ms", "cache_ms", "total_ms", "ttft_ms", "latency_ms", "completion_tokens", "prompt_tokens"] {
        assert!(done[k].is_number(), "done lacks {k}: {done}");
    }
    assert_eq!(done["completion_tokens"], 8);
    let text = miss.text();
    assert!(!text.is_empty());

    let sent = proxy.posts();
    assert_eq!(sent, 1);
    let hit = post(&gen_url(&r), body, &[]);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(hit.names(), names, "a hit replays the same event shapes");
    assert_eq!(hit.text(), text, "a hit returns the identical text");
    assert_eq!(hit.event("route").unwrap()["cache"], "hit");
    assert_eq!(hit.event("done").unwrap()["cache"], "hit");
    let whole =
        post(&gen_url(&r), r#"{"prompt":"The capital of France is","max_tokens":8,"temp":0,"stream":false}"#, &[]);
    assert_eq!(whole.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(whole.json()["text"].as_str(), Some(text.as_str()));
    assert_eq!(whole.json()["route"]["backend"], "m1");
    assert_eq!(proxy.posts(), sent, "cache hits must not reach the backend");
    assert_eq!(r.metric("router_cache_hits_total"), 2.0);

    // Every output-changing parameter is in the key.
    let other = post(&gen_url(&r), r#"{"prompt":"The capital of France is","max_tokens":4,"temp":0}"#, &[]);
    assert_eq!(other.header("x-cache").as_deref(), Some("MISS"));
    // Sampled answers are cached only with a seed.
    let sampled = r#"{"prompt":"The capital of France is","max_tokens":3,"temp":0.9}"#;
    assert_eq!(post(&gen_url(&r), sampled, &[]).header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(post(&gen_url(&r), sampled, &[]).header("x-cache").as_deref(), Some("MISS"));
    let seeded = r#"{"prompt":"The capital of France is","max_tokens":3,"temp":0.9,"seed":7}"#;
    let s1 = post(&gen_url(&r), seeded, &[]);
    assert_eq!(s1.header("x-cache").as_deref(), Some("MISS"));
    let s2 = post(&gen_url(&r), seeded, &[]);
    assert_eq!(s2.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(s1.text(), s2.text());

    // The caller's last decision and stats.
    let last: Value = http().get(format!("{}/last_request_stats", r.url())).send().unwrap().json().unwrap();
    assert_eq!(last["request_id"].as_str(), s2.header("x-request-id").as_deref(), "{last}");
    assert_eq!(last["route"]["backend"], "m1");
    assert_eq!(last["cache"], "hit");
    // Backends list live facts.
    let backends: Value = http().get(format!("{}/backends", r.url())).send().unwrap().json().unwrap();
    let m1 = &backends["backends"][0];
    assert_eq!(m1["id"], "m1");
    assert_eq!(m1["healthy"], true);
    assert_eq!(m1["model"], "gemma-3-270m");
    assert!(m1["latency_ms"].as_f64().unwrap() > 0.0, "{m1}");
    assert_eq!(m1["in_flight"], 0);
    let m = r.metrics();
    assert!(
        metric_sum(&m, "router_model_selected_total{backend=\"m1\",device=\"cpu\",model=\"gemma-3-270m\"}") >= 4.0,
        "{m}"
    );
    assert!(metric_sum(&m, "router_request_latency_seconds_count") >= 8.0);
    assert!(metric_sum(&m, "router_routing_latency_seconds_count") >= 4.0);

    // The response log has the miss (written off the request path).
    let rid = miss.header("x-request-id").unwrap();
    let mut found = None;
    wait_for("response log line", Duration::from_secs(10), || {
        for e in std::fs::read_dir(logs.path()).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["request_id"] == rid.as_str() {
                    found = Some(v);
                }
            }
        }
        found.is_some()
    });
    let rec = found.unwrap();
    assert_eq!(rec["text"].as_str(), Some(text.as_str()));
    assert_eq!(rec["prompt"], "The capital of France is");
    assert_eq!(rec["params"]["max_tokens"], 8);
    assert_eq!(rec["model"], "gemma-3-270m");
    assert_eq!(rec["tokens"], 8);
    assert!(rec["ttft_ms"].is_number() && rec["latency_ms"].is_number() && rec["time"].is_string());
}

/// Sends `n` requests at once; returns the responses.
fn burst(urls: &[String], n: usize, body: &str, key: &str) -> Vec<Answer> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                s.spawn(move || post(&url, body, &[("x-api-key", key)]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

const PRIMED: &str = r#"{"prompt":"Rate limits keep","max_tokens":2,"temp":0}"#;

/// A rate-limit overrides file naming `keys` (only named keys get a bucket of their own), each
/// with the given limit, plus `extra` entries as JSON.
fn known_keys(dir: &std::path::Path, keys: &[&str], rps: f64, burst: u32, extra: &str) -> String {
    let mut entries: Vec<String> =
        keys.iter().map(|k| format!(r#""{k}": {{"rps": {rps}, "burst": {burst}}}"#)).collect();
    if !extra.is_empty() {
        entries.push(extra.to_string());
    }
    let path = dir.join("keys.json");
    std::fs::write(&path, format!("{{{}}}", entries.join(", "))).unwrap();
    path.display().to_string()
}

#[test]
fn rate_limit_is_exact_under_concurrency_in_process() {
    let b = gemma();
    let dir = tempfile::tempdir().unwrap();
    let overrides = known_keys(dir.path(), &["primer", "k1", "k2"], 0.01, 5, r#""vip": {"rps": 0.01, "burst": 8}"#);
    let r = Router::start(
        &[("m1", b.url())],
        &[
            ("RATE_LIMIT_RPS", "0.01".into()),
            ("RATE_LIMIT_BURST", "5".into()),
            ("RATE_LIMIT_OVERRIDES", overrides),
            ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
        ],
        &["m1"],
    );
    let url = gen_url(&r);
    // Prime the cache with another key, so that admitted requests are answered at once.
    assert_eq!(post(&url, PRIMED, &[("x-api-key", "primer")]).status, 200);

    let answers = burst(std::slice::from_ref(&url), 20, PRIMED, "k1");
    assert_eq!(count(&answers, 200), 5, "burst 5: exactly 5 pass");
    assert_eq!(count(&answers, 429), 15);
    let limited = answers.iter().find(|a| a.status == 429).unwrap();
    assert!(limited.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(limited.header("x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(limited.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(limited.json()["error"]["type"], "rate_limit_exceeded");
    let ok = answers.iter().find(|a| a.status == 200).unwrap();
    assert_eq!(ok.header("x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(ok.header("x-cache").as_deref(), Some("HIT"));

    // Another known key has its own bucket; Authorization: Bearer is a key too.
    assert_eq!(post(&url, PRIMED, &[("authorization", "Bearer k2")]).status, 200);
    // The per-key override.
    assert_eq!(count(&burst(std::slice::from_ref(&url), 12, PRIMED, "vip"), 200), 8);
    // A key nobody configured is limited by the client's address: a new random key with each
    // request does not escape the limit.
    let random: Vec<u16> =
        (0..7).map(|i| post(&url, PRIMED, &[("x-api-key", &format!("random-{i}"))]).status).collect();
    assert_eq!(random.iter().filter(|s| **s == 200).count(), 5, "{random:?}");
    // Without a key the client IP is limited: the same bucket, already empty.
    let by_ip: Vec<u16> = (0..2).map(|_| post(&url, PRIMED, &[]).status).collect();
    assert_eq!(by_ip, [429, 429]);
    assert_eq!(r.metric("router_rate_limited_total"), 15.0 + 4.0 + 2.0 + 2.0);
}

#[test]
fn two_routers_share_one_limit_and_one_cache_through_redis() {
    let b = gemma();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("REDIS_URL", redis.url()),
        ("REDIS_KEY_PREFIX", "t2:".to_string()),
        ("RATE_LIMIT_RPS", "0.01".into()),
        ("RATE_LIMIT_BURST", "5".into()),
        ("RATE_LIMIT_OVERRIDES", known_keys(dir.path(), &["primer", "shared"], 0.01, 5, "")),
        ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
    ];
    let (p1, p2) = (CountingProxy::start(b.port), CountingProxy::start(b.port));
    let r1 = Router::start(&[("m1", p1.url())], &env, &["m1"]);
    let r2 = Router::start(&[("m1", p2.url())], &env, &["m1"]);
    let first = post(&gen_url(&r1), PRIMED, &[("x-api-key", "primer")]);
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"), "{}", first.body);
    // Stored after the done event went out: give the write a moment.
    wait_for("cache entry in redis", Duration::from_secs(5), || !redis.keys("t2:cache:*").is_empty());
    let second = post(&gen_url(&r2), PRIMED, &[("x-api-key", "primer")]);
    assert_eq!(second.header("x-cache").as_deref(), Some("HIT"), "the other replica sees the answer");
    assert_eq!(second.text(), first.text());
    assert_eq!((p1.posts(), p2.posts()), (1, 0), "only the first replica generated");

    let answers = burst(&[gen_url(&r1), gen_url(&r2)], 20, PRIMED, "shared");
    assert_eq!(count(&answers, 200), 5, "one bucket of 5 across both replicas");
    assert_eq!(count(&answers, 429), 15);
    assert!(r1.metric("router_rate_limited_total") > 0.0 && r2.metric("router_rate_limited_total") > 0.0);
    assert_eq!(redis.keys("t2:rl:*").len(), 2, "primer and shared buckets live in redis");
    assert_eq!(r1.metric("router_redis_errors_total"), 0.0);
}

#[test]
fn redis_outage_keeps_serving_and_recovers() {
    let b = gemma();
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let r = Router::start(
        &[("m1", b.url())],
        &[
            ("REDIS_URL", redis.url()),
            ("REDIS_KEY_PREFIX", "t3:".to_string()),
            ("REDIS_RETRY_MS", "300".into()),
            ("RATE_LIMIT_RPS", "0.01".into()),
            ("RATE_LIMIT_BURST", "3".into()),
            ("RATE_LIMIT_OVERRIDES", known_keys(dir.path(), &["a", "b", "c", "d", "e"], 0.01, 3, "")),
            ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
        ],
        &["m1"],
    );
    let url = gen_url(&r);
    let body = r#"{"prompt":"When the database goes down","max_tokens":3,"temp":0}"#;
    let first = post(&url, body, &[("x-api-key", "a")]);
    assert_eq!(first.status, 200);
    wait_for("cache entry", Duration::from_secs(5), || !redis.keys("t3:cache:*").is_empty());
    assert_eq!(post(&url, body, &[("x-api-key", "a")]).header("x-cache").as_deref(), Some("HIT"));

    redis.kill();
    let during = post(&url, body, &[("x-api-key", "b")]);
    assert_eq!(during.status, 200, "still served without redis: {}", during.body);
    assert_eq!(during.header("x-cache").as_deref(), Some("MISS"), "the cache is bypassed");
    assert_eq!(during.text(), first.text());
    assert!(r.metric("router_redis_errors_total") >= 1.0);
    let health: Value = http().get(format!("{}/health", r.url())).send().unwrap().json().unwrap();
    assert_eq!(health["redis"], "down");
    // Limits fall back to the in-process limiter with the same quota. An empty prompt passes the
    // limiter and then fails validation (400), so admitted requests are cheap to count.
    let statuses: Vec<u16> = (0..5).map(|_| post(&url, r#"{"prompt":""}"#, &[("x-api-key", "c")]).status).collect();
    assert_eq!(statuses, [400, 400, 400, 429, 429]);

    redis.restart();
    // Recovery needs no restart: within a few probes the router uses redis again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        post(&url, r#"{"prompt":""}"#, &[("x-api-key", "d")]);
        if !redis.keys("t3:rl:*").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "router did not return to redis:\n{}", r.proc.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = post(&url, body, &[("x-api-key", "e")]);
    assert_eq!(after.status, 200);
    wait_for("cache entry after restart", Duration::from_secs(5), || !redis.keys("t3:cache:*").is_empty());
    assert_eq!(post(&url, body, &[("x-api-key", "e")]).header("x-cache").as_deref(), Some("HIT"));
    let health: Value = http().get(format!("{}/health", r.url())).send().unwrap().json().unwrap();
    assert_eq!(health["redis"], "up");
}

/// A hung Redis (stopped with SIGSTOP: its sockets stay open, nothing answers) costs requests at
/// most the Redis timeout: the router serves on, limits fall back in process, `/health` says
/// "down", and once Redis thaws the router uses it again.
#[test]
fn a_hung_redis_costs_at_most_its_timeout() {
    let b = gemma();
    let redis = Redis::start();
    let r = Router::start(
        &[("m1", b.url())],
        &[
            ("REDIS_URL", redis.url()),
            ("REDIS_KEY_PREFIX", "t9:".to_string()),
            ("REDIS_TIMEOUT_MS", "100".into()),
            ("REDIS_RETRY_MS", "300".into()),
            ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
        ],
        &["m1"],
    );
    let url = gen_url(&r);
    let body = r#"{"prompt":"When the database hangs","max_tokens":3,"temp":0}"#;
    let first = post(&url, body, &[]);
    assert_eq!(first.status, 200);
    wait_for("cache entry", Duration::from_secs(5), || !redis.keys("t9:cache:*").is_empty());

    redis.freeze(true);
    let slowest = (0..6)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(
                post(&url, r#"{"prompt":""}"#, &[]).status,
                400,
                "the limiter refused or failed while Redis hung"
            );
            t.elapsed()
        })
        .max()
        .unwrap();
    assert!(slowest < Duration::from_millis(1000), "a request took {slowest:?} while Redis hung (timeout 100 ms)");
    let t = Instant::now();
    let during = post(&url, body, &[]);
    assert_eq!(during.status, 200, "not served while Redis hung: {}", during.body);
    assert_eq!(during.text(), first.text());
    let t_health = Instant::now();
    let health: Value = http().get(format!("{}/health", r.url())).send().unwrap().json().unwrap();
    assert!(t_health.elapsed() < Duration::from_millis(1000), "/health took {:?}", t_health.elapsed());
    assert_eq!(health["redis"], "down");
    assert!(r.metric("router_redis_errors_total") >= 1.0);
    eprintln!("slowest limiter request {slowest:?}; a generation {:?} while Redis hung", t.elapsed());

    redis.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Redis is tried again by the next request after REDIS_RETRY_MS.
        let hit = post(&url, body, &[]).header("x-cache").as_deref() == Some("HIT");
        let h: Value = http().get(format!("{}/health", r.url())).send().unwrap().json().unwrap();
        if hit && h["redis"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "router did not return to redis:\n{}", r.proc.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads a streaming answer, calling `on_event` after each event.
fn stream_events(url: &str, body: &str, mut on_event: impl FnMut(&str)) -> Vec<String> {
    let mut resp = http().post(url).header("content-type", "application/json").body(body.to_string()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut parser = SseParser::new();
    let mut names = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = resp.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        for ev in parser.push(&buf[..n]) {
            on_event(&ev.event);
            names.push(ev.event);
        }
    }
    names
}

#[test]
fn backend_failures_fall_back_or_end_with_an_error_event() {
    let b = gemma();
    let mut victim = Inference::start("a1", GEMMA);
    // a1 sorts before m1, so with equal models the baseline tries it first.
    let r = Router::start(
        &[("a1", victim.url()), ("m1", b.url())],
        &[
            ("HEALTH_INTERVAL_MS", "600000".into()),
            ("FIRST_TOKEN_TIMEOUT_MS", "8000".into()),
            ("CACHE_TTL_SECS", "0".into()),
        ],
        &["a1", "m1"],
    );
    let url = gen_url(&r);
    let pid = victim.proc.pid().to_string();

    // 1. A backend that accepts the connection but never answers: first-token timeout.
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let slow = post(&url, r#"{"prompt":"Stalled backends","max_tokens":2,"temp":0}"#, &[]);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert_eq!(slow.event("route").unwrap()["backend"], "m1");
    assert!(slow.names().contains(&"done".to_string()));
    assert_eq!(r.metric("router_fallbacks_total{reason=\"first_token_timeout\"}"), 1.0);

    // 2. A backend killed after tokens were sent: the stream ends with an error event.
    let mut killed = false;
    let names = stream_events(&url, r#"{"prompt":"Once upon a time","max_tokens":400,"temp":0,"model":"a1"}"#, |ev| {
        if ev == "token" && !killed {
            victim.proc.kill();
            killed = true;
        }
    });
    assert!(killed, "no token arrived: {names:?}");
    assert_eq!(names.first().map(String::as_str), Some("route"));
    assert_eq!(names.last().map(String::as_str), Some("error"), "never a silent truncation: {names:?}");
    assert!(!names.contains(&"done".to_string()));

    // 3. A dead backend: connect error, the next candidate answers.
    let a = post(&url, r#"{"prompt":"Dead backends","max_tokens":2,"temp":0}"#, &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    let route = a.event("route").unwrap();
    assert_eq!(route["backend"], "m1");
    assert!(route["reason"].as_str().unwrap().contains("a1"), "the reason names the failed backend: {route}");
    assert!(a.names().contains(&"done".to_string()));
    assert_eq!(r.metric("router_fallbacks_total{reason=\"connect\"}"), 1.0);
    assert!(r.metric("router_backend_errors_total{backend=\"a1\"}") >= 3.0);
    let backends: Value = http().get(format!("{}/backends", r.url())).send().unwrap().json().unwrap();
    let a1 = backends["backends"].as_array().unwrap().iter().find(|b| b["id"] == "a1").unwrap().clone();
    assert_eq!(a1["healthy"], false, "dropped at once: {a1}");
    // And a dead forced backend is a clean 503.
    let forced = post(&url, r#"{"prompt":"x","max_tokens":2,"model":"a1"}"#, &[]);
    assert_eq!(forced.status, 503, "{}", forced.body);
    assert_error_shape(&forced);
}

#[test]
fn prefer_backend_filters_by_device_and_falls_back_to_cpu() {
    let b = gemma();
    // The stub reports device cuda: it stands in for a GPU backend on this GPU-less machine.
    let (mut gpu, gpu_port) = stub("g1", "cuda");
    let r = Router::start(
        &[("m1", b.url()), ("g1", format!("http://127.0.0.1:{gpu_port}"))],
        &[("HEALTH_INTERVAL_MS", "300".into()), ("FIRST_TOKEN_TIMEOUT_MS", "120000".into())],
        &["m1", "g1"],
    );
    let url = gen_url(&r);
    let on = |pref: &str| {
        post(&url, &format!(r#"{{"prompt":"Pick a device","max_tokens":2,"temp":0,"prefer_backend":"{pref}"}}"#), &[])
    };

    let g = on("gpu");
    assert_eq!(g.status, 200, "{}", g.body);
    let route = g.event("route").unwrap();
    assert_eq!((route["backend"].as_str(), route["device"].as_str()), (Some("g1"), Some("cuda")));
    assert!(!route["reason"].as_str().unwrap().contains("fell back"));

    let c = on("cpu");
    let route = c.event("route").unwrap();
    assert_eq!((route["backend"].as_str(), route["device"].as_str()), (Some("m1"), Some("cpu")), "{route}");

    // auto: the baseline takes the smallest model, and the stub says it serves stub-100m.
    let a = on("auto");
    assert_eq!(a.event("route").unwrap()["backend"], "g1");

    // Non-streaming, cpu.
    let whole = post(
        &url,
        r#"{"prompt":"Pick a device, whole","max_tokens":2,"temp":0,"prefer_backend":"cpu","stream":false}"#,
        &[],
    );
    let v = whole.json();
    assert_eq!(v["route"]["backend"], "m1");
    assert_eq!(v["model_id"], "m1");
    assert!(v["text"].is_string() && v["total_ms"].is_number(), "{v}");

    // No healthy GPU backend: gpu falls back to cpu and says so.
    gpu.kill();
    wait_for("g1 dropped", Duration::from_secs(10), || {
        let v: Value = http().get(format!("{}/backends", r.url())).send().unwrap().json().unwrap();
        v["backends"].as_array().unwrap().iter().any(|b| b["id"] == "g1" && b["healthy"] == false)
    });
    let fb = post(&url, r#"{"prompt":"Pick a device again","max_tokens":2,"temp":0,"prefer_backend":"gpu"}"#, &[]);
    assert_eq!(fb.status, 200, "{}", fb.body);
    let route = fb.event("route").unwrap();
    assert_eq!(route["backend"], "m1");
    assert!(route["reason"].as_str().unwrap().starts_with("no healthy GPU backend, fell back to CPU"), "{route}");
    let v = fb.event("done").unwrap();
    assert_eq!(v["device"], "cpu");
}

#[test]
fn openai_python_client_works_against_the_router() {
    let py = Command::new("python3").args(["-c", "import openai"]).status();
    assert!(py.is_ok_and(|s| s.success()), "python3 with the openai package is required: pip install openai");
    let g = gemma();
    let q = qwen();
    let r = Router::start(
        &[("m1", g.url()), ("m2", q.url())],
        &[("FIRST_TOKEN_TIMEOUT_MS", "120000".into())],
        &["m1", "m2"],
    );
    let script = workspace().join("router/tests/openai_client.py");
    let out = Command::new("python3").arg(&script).arg(format!("{}/v1", r.url())).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client script failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.proc.log_tail()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // Chat went to the model with a chat template; plain completions to the smallest model.
    assert_eq!(v["chat_model"], "qwen2.5-coder-0.5b-instruct", "{v}");
    assert_eq!(v["completion_model"], "gemma-3-270m", "{v}");
}

/// A backend that accepts `/generate`, answers the SSE headers and then sends nothing (a long
/// prefill), reporting on `closed` when the router hangs up on it. `/health` answers as m1.
fn prefilling_backend() -> (u16, std::sync::mpsc::Receiver<&'static str>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let n = c.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if head.starts_with("GET /health") {
                    let body =
                        r#"{"status":"ok","model_id":"m1","model":"gemma-3-270m","arch":"gemma3","device":"cpu"}"#;
                    let _ = write!(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                } else if head.starts_with("POST /generate") {
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    let _ = tx.send("started");
                    // Prefilling: nothing to send until the router hangs up.
                    while c.read(&mut buf).is_ok_and(|n| n > 0) {}
                    let _ = tx.send("closed");
                }
            });
        }
    });
    (port, rx)
}

/// A client that leaves while its prompt is still being prefilled frees the backend at once: the
/// router drops the upstream request instead of waiting for the first token to notice.
#[test]
fn a_client_leaving_during_prefill_is_cancelled_upstream_within_a_second() {
    use std::io::Write;
    let (port, events) = prefilling_backend();
    let r = Router::start(
        &[("m1", format!("http://127.0.0.1:{port}"))],
        &[("FIRST_TOKEN_TIMEOUT_MS", "30000".into())],
        &["m1"],
    );
    let body = r#"{"prompt":"a long prompt","max_tokens":8}"#;
    let addr = r.url().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(events.recv_timeout(Duration::from_secs(10)), Ok("started"));
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let left = Instant::now();
    assert_eq!(
        events.recv_timeout(Duration::from_secs(1)),
        Ok("closed"),
        "the router kept the backend busy after the client left"
    );
    eprintln!("upstream closed {} ms after the client left", left.elapsed().as_millis());
}

/// When every backend's queue is full, the router answers at once with a 503 JSON error and a
/// Retry-After header (after trying each backend once), and serves again once a slot frees.
#[test]
fn every_queue_full_is_a_503_with_retry_after() {
    let flags = [("--max-concurrent", "1"), ("--max-queue", "0")];
    let (a, b) = (Inference::start_with("m1", GEMMA, &flags), Inference::start_with("m2", GEMMA, &flags));
    let r = Router::start(&[("m1", a.url()), ("m2", b.url())], &[], &["m1", "m2"]);
    let long = r#"{"prompt":"Once upon a time","max_tokens":1500,"temp":0,"chat":false}"#;
    let hold = |url: String| {
        let resp = http()
            .post(format!("{url}/generate"))
            .header("content-type", "application/json")
            .body(long)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "the backend did not take the long request");
        resp
    };
    let busy = [hold(a.url()), hold(b.url())];
    wait_for("both slots taken", Duration::from_secs(10), || {
        a.metric("model_in_flight") == 1.0 && b.metric("model_in_flight") == 1.0
    });
    let t0 = Instant::now();
    let ans = post(
        &format!("{}/generate", r.url()),
        r#"{"prompt":"Every queue is full","max_tokens":2,"temp":0,"stream":false}"#,
        &[],
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "the router waited {:?} instead of refusing", t0.elapsed());
    assert_eq!(ans.status, 503, "{}", ans.body);
    assert_eq!(ans.header("retry-after").as_deref(), Some("1"), "no Retry-After on the 503");
    let v: Value = serde_json::from_str(&ans.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", ans.body));
    assert!(v["error"]["type"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    for (id, inf) in [("m1", &a), ("m2", &b)] {
        let refused = inf.metric(&format!("model_requests_total{{model_id=\"{id}\",status=\"overloaded\"}}"));
        assert_eq!(refused, 1.0, "{id} was not tried exactly once");
    }
    drop(busy);
    wait_for("a freed slot", Duration::from_secs(5), || a.metric("model_in_flight") == 0.0);
    let ok = post(
        &format!("{}/generate", r.url()),
        r#"{"prompt":"A slot is free again","max_tokens":2,"temp":0,"stream":false}"#,
        &[],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

/// The same end to end on a real model service: a client that leaves the router while a long prompt
/// is being prefilled frees the service's slot within a second, and no token is generated for it
/// (the engine stops between prefill chunks instead of finishing the prompt first).
#[test]
fn a_real_backend_frees_its_slot_within_a_second_of_a_client_leaving_during_prefill() {
    use std::io::Write;
    // Chunks of 64 tokens take ~0.13 s here alone, and stay well inside the second when other tests
    // load both cores (with the default 256, one chunk under that load took over a second). With
    // one pass over the whole prompt (`--prefill-chunk 100000`) this test fails.
    let inf = Inference::start_with("m1", GEMMA, &[("--max-concurrent", "1"), ("--prefill-chunk", "64")]);
    let r = Router::start(&[("m1", inf.url())], &[("FIRST_TOKEN_TIMEOUT_MS", "60000".into())], &["m1"]);
    // About 1,700 tokens: several seconds of prefill for gemma-3-270m on two cores.
    let colours = ["red", "green", "blue", "amber", "violet", "silver", "ochre", "teal"];
    let prompt: String = (0..220).map(|i| format!("Item {i} is {}. ", colours[i % colours.len()])).collect();
    let body = serde_json::json!({ "prompt": prompt, "max_tokens": 8, "temp": 0, "chat": false }).to_string();
    let addr = r.url().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let t0 = Instant::now();
    while inf.metric("model_in_flight") != 1.0 {
        if t0.elapsed() > Duration::from_secs(10) {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            panic!(
                "the backend never started the request; the router answered: {}",
                String::from_utf8_lossy(&got[..n])
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let left = Instant::now();
    wait_for("the backend's slot to be free", Duration::from_secs(1), || inf.metric("model_in_flight") == 0.0);
    eprintln!("backend slot free {} ms after the client left", left.elapsed().as_millis());
    assert_eq!(
        inf.metric("model_tokens_generated_total"),
        0.0,
        "the backend finished the prompt and sampled a token for a client that had left"
    );
    assert_eq!(inf.metric("model_requests_total{model_id=\"m1\",status=\"cancelled\"}"), 1.0);
}
