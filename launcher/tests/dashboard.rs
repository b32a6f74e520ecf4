//! The Grafana dashboard works on real metrics: a native mesh (the router, the real m1 and a
//! second backend that always fails, so that fallbacks and backend errors happen), node-exporter,
//! and Prometheus scraping them with the repository's prometheus/prometheus.yml (targets rewritten
//! to local ports). After real traffic (a cache hit and a burst that is rate-limited included),
//! every PromQL expression of grafana/dashboards/polyllm.json must return data through Prometheus'
//! HTTP API. Only the dcgm-exporter (GPU) expressions are exempt, by an explicit list: no GPU and
//! no dcgm-exporter exist here.
mod support;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;
use support::*;

/// Expressions that need an exporter which cannot run natively here (dcgm-exporter: NVIDIA GPU).
fn needs_gpu_exporter(expr: &str) -> bool {
    expr.contains("DCGM_")
}

/// A backend that is healthy (model "fake-1m": the smallest, so the router tries it first) but
/// answers every generation with a 500: each request through the router then records a backend
/// error and a fallback to m1.
fn failing_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = std::io::Read::read_exact(&mut r, &mut body);
                let (status, body) = if first.starts_with("GET /health") {
                    ("200 OK", r#"{"status":"ok","model_id":"m9","model":"fake-1m","arch":"llama","device":"cpu"}"#)
                } else {
                    ("500 Internal Server Error", r#"{"error":{"message":"deliberate failure","type":"internal"}}"#)
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

fn query(prom: &str, expr: &str) -> serde_json::Value {
    let r = client().get(format!("{prom}/api/v1/query")).query(&[("query", expr)]).send().expect("Prometheus query");
    let v: serde_json::Value = r.json().expect("Prometheus JSON");
    assert_eq!(v["status"], "success", "query {expr} failed: {v}");
    v["data"]["result"].clone()
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn every_dashboard_query_returns_data_from_a_native_mesh() {
    let prometheus = require("prometheus", "prometheus");
    let node_exporter = require("prometheus-node-exporter", "prometheus-node-exporter");
    let inference = bin("inference");
    let router = bin("router");
    let model = gemma();
    let tmp = tempfile::tempdir().unwrap();

    // The mesh: m1 (real), m9 (fails), the router with a small rate limit.
    let m1_port = free_port();
    let _m1 = Proc::spawn(
        "m1",
        Command::new(&inference).arg("--model").arg(&model).args([
            "--model-id",
            "m1",
            "--host",
            "127.0.0.1",
            "--port",
            &m1_port.to_string(),
            "--threads",
            "1",
        ]),
    );
    let m9_port = failing_backend();
    let router_port = free_port();
    let backends = serde_json::json!({
        "m1": format!("http://127.0.0.1:{m1_port}"),
        "m9": format!("http://127.0.0.1:{m9_port}"),
    });
    // Only keys the operator names get a bucket of their own; the traffic below uses these.
    let keys = tmp.path().join("keys.json");
    let known: serde_json::Map<String, serde_json::Value> = ["dash-0", "dash-1", "dash-2", "dash-repeat", "dash-burst"]
        .iter()
        .map(|k| (k.to_string(), serde_json::json!({"rps": 0.2, "burst": 3})))
        .collect();
    std::fs::write(&keys, serde_json::Value::Object(known).to_string()).unwrap();
    let mut router_proc = Proc::spawn(
        "router",
        Command::new(&router)
            .current_dir(tmp.path())
            .env_remove("REDIS_URL")
            .args(["--host", "127.0.0.1", "--port", &router_port.to_string(), "--backends", &backends.to_string()])
            .args(["--health-interval-ms", "300", "--rate-limit-rps", "0.2", "--rate-limit-burst", "3"])
            .arg("--rate-limit-overrides")
            .arg(&keys),
    );
    let node_port = free_port();
    let _node = Proc::spawn(
        "node-exporter",
        Command::new(&node_exporter).arg(format!("--web.listen-address=127.0.0.1:{node_port}")),
    );

    // Prometheus with the repository's config, targets rewritten to the local ports.
    let repo_cfg = std::fs::read_to_string(repo().join("prometheus/prometheus.yml")).unwrap();
    let mut cfg = repo_cfg.clone();
    for (from, to) in [
        ("router:8080".to_string(), format!("127.0.0.1:{router_port}")),
        ("m1:8101".to_string(), format!("127.0.0.1:{m1_port}")),
        ("node-exporter:9100".to_string(), format!("127.0.0.1:{node_port}")),
        ("scrape_interval: 5s".to_string(), "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 5s".to_string(), "evaluation_interval: 1s".to_string()),
    ] {
        assert!(cfg.contains(&from), "prometheus/prometheus.yml no longer contains {from:?}");
        cfg = cfg.replace(&from, &to);
    }
    let cfg_path = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    let _prom = Proc::spawn(
        "prometheus",
        Command::new(&prometheus)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
    );

    let base = format!("http://127.0.0.1:{router_port}");
    wait_for(&format!("{base}/health"), Duration::from_secs(240), "the router with m1 and m9 healthy", |s, b| {
        s == 200 && b.contains("\"healthy_backends\":2")
    });
    router_proc.assert_running();
    wait_for(&format!("{prom}/-/ready"), Duration::from_secs(60), "Prometheus", |s, _| s == 200);
    // Rates need a sample from before the traffic: wait until the router and m1 have been scraped,
    // then a couple more scrape intervals, or a fast run leaves every histogram rate at NaN.
    wait_for(
        &format!("{prom}/api/v1/query?query=count(model_generation_latency_seconds_count)%2Bcount(router_request_latency_seconds_count)"),
        Duration::from_secs(30),
        "Prometheus' first scrape of the router and m1",
        |s, b| s == 200 && b.contains("\"value\""),
    );
    std::thread::sleep(Duration::from_secs(2));

    // Traffic: distinct prompts (each its own known API key, so the limit does not bite), a repeat
    // (cache hit), then a burst on one key (rate-limited).
    for (i, p) in ["def add(a, b):", "The capital of France is", "for i in range(10):"].iter().enumerate() {
        let (s, body) = generate(&base, p, &format!("dash-{i}"));
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("event: done"), "{body}");
    }
    let (s, body) = generate(&base, "def add(a, b):", "dash-repeat");
    assert_eq!(s, 200, "{body}");
    let mut limited = 0;
    for _ in 0..8 {
        let (s, _) = generate(&base, "def add(a, b):", "dash-burst");
        if s == 429 {
            limited += 1;
        }
    }
    let metrics = client().get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert!(limited > 0, "no request was rate-limited; router metrics:\n{metrics}");
    for name in [
        "router_cache_hits_total",
        "router_rate_limited_total",
        "router_fallbacks_total",
        "router_backend_errors_total",
    ] {
        assert!(metric_value(&metrics, name) > 0.0, "{name} is 0 after the traffic; router metrics:\n{metrics}");
    }

    // Let Prometheus scrape the final counters a few times.
    wait_for(
        &format!("{prom}/api/v1/query?query=sum(router_rate_limited_total)%3E0"),
        Duration::from_secs(30),
        "Prometheus to scrape the router",
        |s, b| s == 200 && b.contains("\"value\""),
    );
    std::thread::sleep(Duration::from_secs(3));

    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("grafana/dashboards/polyllm.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((p["title"].as_str().unwrap_or("?").to_string(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(exprs.len() >= 15, "the dashboard has only {} queries", exprs.len());
    let mut failures = Vec::new();
    let mut exempt = Vec::new();
    for (title, expr) in &exprs {
        let result = query(&prom, expr);
        let n = result.as_array().map_or(0, |a| a.len());
        eprintln!("[{n} series] {title}: {expr}");
        if needs_gpu_exporter(expr) {
            exempt.push(expr.clone());
        } else if n == 0 {
            failures.push(format!("{title}: {expr} (no series)"));
        } else {
            // Data, not just series: at least one finite value (a quantile over no samples is NaN).
            let finite = result
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite));
            if !finite {
                failures.push(format!("{title}: {expr} (only NaN/Inf: {result})"));
            }
        }
    }
    // The exemption covers exactly the GPU panels, and they exist.
    assert!(!exempt.is_empty(), "the dashboard has no GPU (DCGM) panel");
    assert!(exempt.iter().all(|e| e.contains("DCGM_")));
    assert!(failures.is_empty(), "dashboard queries without data:\n{}", failures.join("\n"));

    // Every required panel is there.
    let titles: Vec<String> = exprs.iter().map(|(t, _)| t.to_lowercase()).collect();
    for want in [
        "model selection",
        "p50 / p95 / p99",
        "tokens/s",
        "first token",
        "cache hit",
        "rate-limited",
        "fallbacks",
        "backend errors",
        "request rate",
        "cpu",
        "gpu utilization",
    ] {
        assert!(titles.iter().any(|t| t.contains(want)), "no panel about {want:?}");
    }
}
