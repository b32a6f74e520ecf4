//! The router's security surface, on real processes: API keys from a hashed keys file with
//! per-key limits, admin endpoints off by default and behind the token, CORS for the configured
//! origin only, prompt and answer text kept out of every log, and no secret ever printed.
mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::process::Command;

fn sha(k: &str) -> String {
    hex::encode(Sha256::digest(k.as_bytes()))
}

const BODY: &str = r#"{"prompt": "hello", "max_tokens": 2}"#;

fn assert_json_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], code, "{}", a.body);
}

fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// A keys file accepting alice (`alice-secret-7f3a`, with `alice_extra` TOML lines) and bob
/// (`bob-secret-91c2`), by their SHA-256.
fn alice_and_bob(dir: &std::path::Path, alice_extra: &str) -> std::path::PathBuf {
    let keys = dir.join("keys.toml");
    let text = format!(
        "[[key]]\nname = \"alice\"\nsha256 = \"{}\"\n{alice_extra}\n[[key]]\nname = \"bob\"\nsha256 = \"{}\"\n",
        sha("alice-secret-7f3a"),
        sha("bob-secret-91c2")
    );
    std::fs::write(&keys, text).unwrap();
    keys
}

#[test]
fn api_keys_are_required_hashed_and_limited_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = alice_and_bob(dir.path(), "rps = 0.01\nburst = 2\n");
    let (_stub, port) = stub("m1", "cpu");
    let r = Router::start(
        &[("m1", format!("http://127.0.0.1:{port}"))],
        &[
            ("API_KEYS_FILE", keys.display().to_string()),
            ("RATE_LIMIT_RPS", "0.01".into()),
            ("RATE_LIMIT_BURST", "3".into()),
        ],
        &["m1"],
    );
    let url = format!("{}/generate", r.url());

    let a = post(&url, BODY, &[]);
    assert_json_error(&a, 401, "missing_api_key");
    assert_eq!(a.header("www-authenticate").as_deref(), Some("Bearer"));
    assert_json_error(&post(&url, BODY, &[("authorization", "Bearer wrong-secret-0000")]), 401, "invalid_api_key");
    // The hash itself is not a key.
    assert_json_error(&post(&url, BODY, &[("x-api-key", &sha("bob-secret-91c2"))]), 401, "invalid_api_key");

    // bob has no limit of his own: the default limit (burst 3), in a bucket of his own.
    let bob: Vec<u16> = (0..4)
        .map(|_| {
            let a = post(&url, BODY, &[("authorization", "Bearer bob-secret-91c2")]);
            if a.status == 200 {
                assert!(a.event("done").is_some(), "{:?}", a.names());
            }
            a.status
        })
        .collect();
    assert_eq!(bob, [200, 200, 200, 429]);
    // alice's own limit: a burst of 2, then 429; bob's empty bucket is not hers.
    let statuses: Vec<u16> = (0..4).map(|_| post(&url, BODY, &[("x-api-key", "alice-secret-7f3a")]).status).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);

    // The OpenAI endpoints and the caller's stats need a key too; probes and metrics do not.
    assert_eq!(get(&format!("{}/v1/models", r.url()), &[]).0, 401);
    assert_eq!(get(&format!("{}/v1/models", r.url()), &[("authorization", "Bearer bob-secret-91c2")]).0, 200);
    assert_eq!(get(&format!("{}/last_request_stats", r.url()), &[]).0, 401);
    let (code, body) = get(&format!("{}/last_request_stats", r.url()), &[("authorization", "Bearer bob-secret-91c2")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&format!("{}/health", r.url()), &[]).0, 200);
    assert_eq!(get(&format!("{}/metrics", r.url()), &[]).0, 200);
    assert!(r.metric("router_requests_total{status=\"401\"}") >= 5.0);

    // No key, right or wrong, ever reaches the log.
    let log = std::fs::read_to_string(&r.proc.log).unwrap();
    assert!(log.contains("API keys required"), "{log}");
    for secret in ["alice-secret-7f3a", "bob-secret-91c2", "wrong-secret-0000"] {
        assert!(!log.contains(secret), "{secret} printed in the router log");
    }
}

#[test]
fn a_bad_keys_file_stops_the_router_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "[[key]]\nname = \"x\"\nsha256 = \"not-hex\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--port", "0", "--backends", r#"{"m1": "http://127.0.0.1:9"}"#])
        .env("API_KEYS_FILE", &keys)
        .env("ROUTER_MODEL", "/nonexistent")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid API keys file") && err.contains("64 hex digits"), "{err}");
}

#[test]
fn admin_endpoints_are_off_by_default_and_need_the_token() {
    let (_stub, port) = stub("m1", "cpu");
    let backends = [("m1", format!("http://127.0.0.1:{port}"))];

    // Off: no such endpoint, even with a token-looking header.
    let off = Router::start(&backends, &[], &["m1"]);
    for path in ["/admin/reset_stats", "/admin/reload_model"] {
        let a = post(&format!("{}{path}", off.url()), "{}", &[("authorization", "Bearer anything")]);
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    drop(off);

    let token = "admin-token-5d8e1b";
    let on = Router::start(&backends, &[("ADMIN_TOKEN", token.to_string())], &["m1"]);
    assert_eq!(post(&format!("{}/generate", on.url()), BODY, &[]).status, 200);
    let stats = format!("{}/last_request_stats", on.url());
    assert_eq!(get(&stats, &[]).0, 200);
    let reset = format!("{}/admin/reset_stats", on.url());
    assert_json_error(&post(&reset, "{}", &[]), 401, "unauthorized");
    assert_json_error(&post(&reset, "{}", &[("authorization", "Bearer admin-token-5d8e1")]), 401, "unauthorized");
    let a = post(&reset, "{}", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["records_cleared"], 1);
    assert_eq!(get(&stats, &[]).0, 404, "the stats were reset");

    let log = std::fs::read_to_string(&on.proc.log).unwrap();
    assert!(!log.contains(token), "the admin token is printed in the log");
    // `--help` shows the variable, never its value.
    let help = Command::new(env!("CARGO_BIN_EXE_router")).arg("--help").env("ADMIN_TOKEN", token).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("ADMIN_TOKEN") && !help.contains(token), "{help}");
}

fn preflight(url: &str, origin: &str) -> Option<String> {
    let r = http()
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, authorization")
        .send()
        .unwrap();
    r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn cors_admits_only_the_configured_origin() {
    let (_stub, port) = stub("m1", "cpu");
    let backends = [("m1", format!("http://127.0.0.1:{port}"))];
    let ui = "http://ui.example:5173";
    let r = Router::start(&backends, &[("CORS_ORIGINS", format!("{ui}/"))], &["m1"]);
    let url = format!("{}/generate", r.url());
    assert_eq!(preflight(&url, ui).as_deref(), Some(ui));
    assert_eq!(preflight(&url, "http://evil.example"), None);
    let a = post(&url, BODY, &[("origin", ui)]);
    assert_eq!((a.status, a.header("access-control-allow-origin").as_deref()), (200, Some(ui)));
    let a = post(&url, BODY, &[("origin", "http://evil.example")]);
    assert_eq!(a.header("access-control-allow-origin"), None);
    drop(r);

    // Unset: no cross-origin access at all.
    let r = Router::start(&backends, &[], &["m1"]);
    assert_eq!(preflight(&format!("{}/generate", r.url()), ui), None);
}

#[test]
fn no_text_mode_keeps_prompt_and_answer_out_of_every_log() {
    let backend = gemma();
    let logs = tempfile::tempdir().unwrap();
    let r = Router::start(
        &[("m1", backend.url())],
        &[
            ("RESPONSE_LOG_DIR", logs.path().display().to_string()),
            ("RESPONSE_LOG_NO_TEXT", "true".into()),
            ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
        ],
        &["m1"],
    );
    let marker = "quokka-marker-4821";
    let body = serde_json::json!({ "prompt": format!("The {marker} went to the market and bought"), "max_tokens": 12, "temp": 0.0 }).to_string();
    let a = post(&format!("{}/generate", r.url()), &body, &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    let answer = a.text();
    assert!(answer.trim().len() >= 4, "answer too short to check: {answer:?}");
    // A cache hit (not a new answer, so not in the response log) must not leak either.
    assert_eq!(post(&format!("{}/generate", r.url()), &body, &[]).status, 200);

    // The response log has the answer, by hash only.
    let mut lines = Vec::new();
    wait_for("response log lines", std::time::Duration::from_secs(10), || {
        lines = std::fs::read_dir(logs.path())
            .unwrap()
            .flat_map(|e| {
                std::fs::read_to_string(e.unwrap().path()).unwrap().lines().map(String::from).collect::<Vec<_>>()
            })
            .collect();
        !lines.is_empty()
    });
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["prompt_sha256"].is_string(), "{l}");
        assert!(v.get("prompt").is_none() && v.get("text").is_none(), "{l}");
    }
    let router_log = std::fs::read_to_string(&r.proc.log).unwrap();
    let backend_log =
        std::env::temp_dir().join(format!("router-test-inference-m1-{}-{}.log", backend.port, std::process::id()));
    let backend_log =
        std::fs::read_to_string(&backend_log).unwrap_or_else(|e| panic!("{}: {e}", backend_log.display()));
    for (name, text) in [("response log", lines.join("\n")), ("router log", router_log), ("backend log", backend_log)] {
        assert!(!text.contains(marker), "the prompt is in the {name}");
        assert!(!text.contains(answer.trim()), "the answer {answer:?} is in the {name}");
    }
}

#[test]
fn with_api_keys_the_cache_is_per_key_unless_shared() {
    let dir = tempfile::tempdir().unwrap();
    let keys = alice_and_bob(dir.path(), "");
    let (_stub, port) = stub("m1", "cpu");
    let cached = r#"{"prompt": "what did the others ask?", "max_tokens": 2, "temp": 0}"#;
    for (shared, bob_sees) in [(false, "MISS"), (true, "HIT")] {
        let mut env = vec![("API_KEYS_FILE", keys.display().to_string())];
        if shared {
            env.push(("SHARED_CACHE", "true".to_string()));
        }
        let r = Router::start(&[("m1", format!("http://127.0.0.1:{port}"))], &env, &["m1"]);
        let url = format!("{}/generate", r.url());
        let alice = [("x-api-key", "alice-secret-7f3a")];
        assert_eq!(post(&url, cached, &alice).header("x-cache").as_deref(), Some("MISS"));
        // The entry is stored after the done event went out: wait until alice's repeat hits.
        wait_for("alice's cache entry", std::time::Duration::from_secs(5), || {
            post(&url, cached, &alice).header("x-cache").as_deref() == Some("HIT")
        });
        let bob = post(&url, cached, &[("authorization", "Bearer bob-secret-91c2")]);
        assert_eq!(bob.status, 200, "{}", bob.body);
        assert_eq!(bob.header("x-cache").as_deref(), Some(bob_sees), "shared cache: {shared}");
    }
}

/// Sends a streaming request and hangs up after the first bytes of the answer.
fn disconnect_early(base: &str, body: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
}

#[test]
fn a_canary_prompt_never_reaches_a_log_at_debug_level() {
    let backend = gemma();
    let dead = free_port();
    let canary = "kestrel-canary-6f1e9";
    let run = |log_prompts: bool| -> String {
        let mut env = vec![("RUST_LOG", "debug".to_string()), ("FIRST_TOKEN_TIMEOUT_MS", "120000".into())];
        if log_prompts {
            env.push(("LOG_PROMPTS", "true".into()));
        }
        // m0 is a dead port: requests forced there fail over (5xx paths), m1 answers.
        let r = Router::start(&[("m1", backend.url()), ("m0", format!("http://127.0.0.1:{dead}"))], &env, &["m1"]);
        let g = format!("{}/generate", r.url());
        let chat = format!("{}/v1/chat/completions", r.url());
        let prompt = format!("The {canary} flew over");
        let ok = serde_json::json!({ "prompt": prompt, "max_tokens": 4, "temp": 0 }).to_string();
        // Success, then a cache hit.
        assert_eq!(post(&g, &ok, &[]).status, 200);
        assert_eq!(post(&g, &ok, &[]).header("x-cache").as_deref(), Some("HIT"));
        // Every kind of 4xx, each carrying the canary where a message could quote it.
        let bad = [
            (format!(r#"{{"prompt": "{canary}""#), 400),
            (serde_json::json!({ "prompt": [canary] }).to_string(), 422),
            (serde_json::json!({ "prompt": prompt, "temp": -1 }).to_string(), 400),
            (serde_json::json!({ "prompt": prompt, "prefer_backend": canary }).to_string(), 400),
            (serde_json::json!({ "prompt": prompt, "max_tokens": 0 }).to_string(), 400),
            (serde_json::json!({ "prompt": canary.repeat(3000) }).to_string(), 400),
        ];
        for (body, status) in &bad {
            assert_eq!(post(&g, body, &[]).status, *status, "{body:.80}");
        }
        let a = post(
            &chat,
            &serde_json::json!({ "model": canary, "messages": [{"role": "user", "content": prompt}] }).to_string(),
            &[],
        );
        assert!(a.status >= 400 && a.status < 500, "{}", a.body);
        let a = post(&chat, &serde_json::json!({ "messages": canary }).to_string(), &[]);
        assert_eq!(a.status, 422, "{}", a.body);
        // A request forced onto the dead backend (5xx), and a client that leaves mid-answer.
        let forced =
            serde_json::json!({ "prompt": format!("{prompt} again"), "max_tokens": 4, "model": "m0" }).to_string();
        assert!(post(&g, &forced, &[]).status >= 500);
        disconnect_early(
            &r.url(),
            &serde_json::json!({ "prompt": format!("{prompt} and away"), "max_tokens": 64 }).to_string(),
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::read_to_string(&r.proc.log).unwrap()
    };
    let quiet = run(false);
    assert!(quiet.contains("\"level\":\"DEBUG\""), "the router did not log at debug level");
    assert!(
        !quiet.contains(canary),
        "the canary is in the router's log:\n{}",
        quiet.lines().filter(|l| l.contains(canary)).collect::<Vec<_>>().join("\n")
    );
    // The model service that answered (and saw the disconnect) does not log it either.
    let backend_log =
        std::env::temp_dir().join(format!("router-test-inference-m1-{}-{}.log", backend.port, std::process::id()));
    let backend_log =
        std::fs::read_to_string(&backend_log).unwrap_or_else(|e| panic!("{}: {e}", backend_log.display()));
    assert!(!backend_log.contains(canary), "the canary is in the model service's log");
    // The switch is real: with prompt logging on, the validation messages that quote it are logged.
    assert!(run(true).contains(canary), "LOG_PROMPTS=true logged no request text");
}
