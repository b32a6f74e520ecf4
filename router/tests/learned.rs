//! End to end, the learned routing loop on real parts: gemma-3-270m and qwen2.5-coder-0.5b serve
//! a handful of prompts, `trainer collect`, `score`, `train` and `evaluate` build a LightGBM router
//! model from their answers, and a running router picks that model up from its directory without a
//! restart, routes with it (features, probabilities and contributions in the route event), reloads
//! it through the admin endpoint, and keeps serving the old model when a new one is broken.
mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Math and string prompts with computed answers: short answers keep the debug-build run short.
fn prompt_set(dir: &Path) -> std::path::PathBuf {
    let mut lines = Vec::new();
    for (i, (a, b)) in
        [(2, 3), (7, 5), (12, 4), (9, 9), (15, 6), (21, 3), (8, 8), (30, 12), (14, 7), (5, 11)].iter().enumerate()
    {
        let (prompt, answer) = if i % 2 == 0 {
            (format!("What is {a} + {b}? Answer with just the number."), (a + b).to_string())
        } else {
            (format!("What is {a} times {b}? Answer with just the number."), (a * b).to_string())
        };
        lines.push(json!({"id": format!("t-math-{i:02}"), "category": "math", "prompt": prompt, "max_tokens": 6,
                          "checker": {"kind": "numeric", "answer": answer, "tolerance": 0}}));
    }
    for (i, w) in ["cat", "house", "river", "planet"].iter().enumerate() {
        let rev: String = w.chars().rev().collect();
        lines.push(json!({"id": format!("t-reas-{i:02}"), "category": "reasoning",
                          "prompt": format!("Write the word \"{w}\" backwards. Answer with just the answer."), "max_tokens": 6,
                          "checker": {"kind": "exact", "answer": rev, "normalize": "casefold"}}));
    }
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    p
}

fn trainer(args: &[&str]) -> String {
    let out = Command::new(workspace_bin("trainer", "trainer"))
        .args(args)
        .current_dir(workspace())
        .env_remove("ROUTER_MODEL")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "trainer {args:?} failed:\n{text}");
    text
}

fn router_model(r: &Router) -> Value {
    http().get(format!("{}/router_model", r.url())).send().unwrap().json().unwrap()
}

#[test]
fn collect_score_train_then_the_router_loads_and_uses_the_model() {
    let (g, q) = (gemma(), qwen());
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompt_set(tmp.path());
    let catalog = tmp.path().join("models.toml");
    std::fs::write(
        &catalog,
        format!(
            "[[backend]]\nid = \"m1\"\nmodel = \"gemma-3-270m\"\nfile = \"x\"\ndevice = \"cpu\"\nport = {}\n\n\
             [[backend]]\nid = \"m2\"\nmodel = \"qwen2.5-coder-0.5b-instruct\"\nfile = \"x\"\ndevice = \"cpu\"\nport = {}\n",
            g.port, q.port
        ),
    )
    .unwrap();
    let (responses, scores, model) =
        (tmp.path().join("responses.jsonl"), tmp.path().join("scores.jsonl"), tmp.path().join("model"));
    let s = |p: &Path| p.display().to_string();

    trainer(&[
        "collect",
        "--prompts",
        &s(&prompts),
        "--backends",
        &s(&catalog),
        "--models",
        "m1,m2",
        "--out",
        &s(&responses),
    ]);
    let rows: Vec<Value> =
        std::fs::read_to_string(&responses).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 14 * 2, "every prompt answered by both models");
    for r in &rows {
        for k in
            ["prompt_id", "model", "backend", "text", "prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms"]
        {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
    }
    // Resumable: a second run finds everything done and asks nobody.
    let again = trainer(&[
        "collect",
        "--prompts",
        &s(&prompts),
        "--backends",
        &s(&catalog),
        "--models",
        "m1,m2",
        "--out",
        &s(&responses),
    ]);
    assert!(again.contains("0 collected, 28 already there"), "{again}");

    trainer(&["score", "--prompts", &s(&prompts), "--responses", &s(&responses), "--out", &s(&scores)]);
    let scored: Vec<Value> =
        std::fs::read_to_string(&scores).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), 28);
    assert!(scored.iter().all(|r| (0.0..=1.0).contains(&r["quality"].as_f64().unwrap())));

    trainer(&[
        "train",
        "--prompts",
        &s(&prompts),
        "--scores",
        &s(&scores),
        "--out",
        &s(&model),
        "--folds",
        "2",
        "--test-share",
        "0.3",
        "--pca-dims",
        "3",
    ]);
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(model.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["classes"], json!(["gemma-3-270m", "qwen2.5-coder-0.5b-instruct"]));
    assert_eq!(meta["latency_ms"].as_array().map(Vec::len), Some(2), "{meta}");
    let calibrated = meta["cost_weight"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&calibrated), "{meta}");
    assert!(std::fs::read_to_string(model.join("model.txt")).unwrap().starts_with("tree"), "a LightGBM text model");
    let report = trainer(&["evaluate", "--prompts", &s(&prompts), "--scores", &s(&scores), "--model", &s(&model)]);
    assert!(report.contains("always-largest"), "{report}");
    let rj: Value = serde_json::from_str(&std::fs::read_to_string(model.join("report.json")).unwrap()).unwrap();
    assert!(rj["splits"][0]["prompts"].as_u64().unwrap() >= 3, "{rj}");
    assert!(report.contains("leave-one-family-out"), "{report}");
    assert!(model.join("report.md").is_file());

    // A router started on an empty model directory routes with the baseline ...
    let live = tmp.path().join("live-model");
    std::fs::create_dir(&live).unwrap();
    let r = Router::start(
        &[("m1", g.url()), ("m2", q.url())],
        &[
            ("ROUTER_MODEL", s(&live)),
            ("EMBEDDER_DIR", s(&workspace().join("models/all-MiniLM-L6-v2"))),
            ("ROUTER_MODEL_POLL_MS", "200".into()),
            ("ADMIN_TOKEN", "sekret-admin".into()),
            ("CACHE_TTL_SECS", "0".into()),
            ("FIRST_TOKEN_TIMEOUT_MS", "120000".into()),
        ],
        &["m1", "m2"],
    );
    let st = router_model(&r);
    assert_eq!(st["model"]["loaded"], false, "{st}");
    assert_eq!(st["model"]["embedder"], true, "{st}");
    assert!(st["policy"].as_str().unwrap().starts_with("baseline"), "{st}");

    // ... and picks the model up when it appears, without a restart.
    for f in ["model.txt", "meta.json"] {
        std::fs::copy(model.join(f), live.join(f)).unwrap();
    }
    wait_for("the router to load the new model", Duration::from_secs(20), || {
        router_model(&r)["model"]["loaded"] == true
    });
    assert_eq!(router_model(&r)["policy"], "learned");

    let a = post(
        &format!("{}/generate", r.url()),
        r#"{"prompt":"What is 6 + 7? Answer with just the number.","max_tokens":4,"temp":0}"#,
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let route = a.event("route").unwrap();
    // Per model, its predicted answer quality.
    let probs = route["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 2, "{route}");
    assert!(probs.values().all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())), "{route}");
    let features = route["features"].as_object().unwrap_or_else(|| panic!("no features: {route}"));
    assert!(features.contains_key("tokens") && features.contains_key("emb_pca_0"), "{route}");
    assert!(features["question_marks"].as_f64().unwrap() >= 1.0, "{route}");
    let contrib = route["contributions"].as_object().unwrap();
    assert!(!contrib.is_empty() && contrib.len() <= 6, "{route}");
    let reason = route["reason"].as_str().unwrap();
    assert!(reason.starts_with("learned:"), "{reason}");
    assert_eq!(features["cost_weight"].as_f64(), Some(calibrated), "{route}");

    let last: Value = http().get(format!("{}/last_request_stats", r.url())).send().unwrap().json().unwrap();
    assert_eq!(last["route"]["features"], route["features"]);

    // The knob per request: 0 takes the best predicted quality, the highest the fastest model.
    let knob = |w: f64| {
        let body = json!({"prompt": "What is 6 + 7? Answer with just the number.", "max_tokens": 2, "temp": 0, "cost_weight": w});
        let a = post(&format!("{}/generate", r.url()), &body.to_string(), &[]);
        assert_eq!(a.status, 200, "{}", a.body);
        a.event("route").unwrap()
    };
    let lat: Vec<f64> = meta["latency_ms"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let classes: Vec<&str> = meta["classes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let q: Vec<f64> = classes.iter().map(|c| probs[*c].as_f64().unwrap()).collect();
    // Weight 0: the best predicted quality, of equals the faster (a model trained on 14 prompts may
    // predict the same for both).
    let best = if (q[0] - q[1]).abs() <= 1e-12 {
        if lat[1] < lat[0] {
            1
        } else {
            0
        }
    } else if q[1] > q[0] {
        1
    } else {
        0
    };
    assert_eq!(knob(0.0)["model"].as_str(), Some(classes[best]), "{q:?} {lat:?}");
    let fastest = if lat[1] < lat[0] { 1 } else { 0 };
    assert_eq!(knob(100.0)["model"].as_str(), Some(classes[fastest]), "{q:?} {lat:?}");
    let bad = post(&format!("{}/generate", r.url()), r#"{"prompt":"x","cost_weight":-1}"#, &[]);
    assert_eq!(bad.status, 400, "{}", bad.body);

    // A forced model skips the prediction.
    let a = post(&format!("{}/generate", r.url()), r#"{"prompt":"Hi","max_tokens":2,"temp":0,"model":"m1"}"#, &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.event("route").unwrap()["backend"], "m1");

    // Admin reload: closed without the token, works with it.
    let reload = |token: Option<&str>| {
        let mut req = http().post(format!("{}/admin/reload_model", r.url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    assert_eq!(reload(None).0, 401);
    assert_eq!(reload(Some("wrong")).0, 401);
    let (code, body) = reload(Some("sekret-admin"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["model"]["loaded"], true);

    // A broken model is refused and the old one keeps serving.
    std::fs::write(live.join("meta.json"), "{ not json").unwrap();
    let (code, body) = reload(Some("sekret-admin"));
    assert_eq!(code, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("previous model keeps serving"), "{body}");
    // Give the file watcher time to see the broken file too.
    std::thread::sleep(Duration::from_secs(1));
    let st = router_model(&r);
    assert_eq!(st["model"]["loaded"], true, "{st}");
    assert!(st["model"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{st}");
    let a = post(
        &format!("{}/generate", r.url()),
        r#"{"prompt":"What is 2 + 2? Answer with just the number.","max_tokens":3,"temp":0}"#,
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.event("route").unwrap()["features"].is_object(), "still the learned policy");
}

#[test]
fn admin_endpoints_do_not_exist_without_a_token() {
    let r = Router::start(&[("m1", "http://127.0.0.1:9".into())], &[], &[]);
    let resp =
        http().post(format!("{}/admin/reload_model", r.url())).header("authorization", "Bearer x").send().unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let st = router_model(&r);
    assert_eq!(st["model"]["loaded"], false, "{st}");
}
