//! A short real run: a real `inference` process serving gemma-3-270m (`--max-concurrent 2`), a real
//! `router` in front of it (no Redis: embedded cache and limiter), and `load_test` sending 6
//! streamed requests with max_tokens 8 at concurrency 2. Checks the CSVs it leaves.
use benchmarks::record::{self, COLUMNS};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `target/debug/<name>` of package `pkg`, built when missing.
fn bin(pkg: &str, name: &str) -> PathBuf {
    let b = target_dir().join("debug").join(name);
    if !b.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st =
            Command::new(cargo).args(["build", "-p", pkg, "--bin", name]).current_dir(workspace()).status().unwrap();
        assert!(st.success(), "cargo build -p {pkg} failed");
    }
    b
}

/// A child process killed and reaped on drop; its output goes to a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let log = std::env::temp_dir().join(format!("loadtest-e2e-{name}-{}.log", std::process::id()));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        Proc { child, log }
    }
    fn tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_ok(client: &reqwest::blocking::Client, url: &str, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    client
        .get(url)
        .send()
        .ok()
        .filter(|r| r.status().is_success())
        .and_then(|r| r.json::<serde_json::Value>().ok())
        .is_some_and(|v| pred(&v))
}

#[test]
fn short_real_run_through_router_and_inference() {
    let model = workspace().join("models").join("gemma-3-270m-q4_k_m.gguf");
    assert!(model.is_file(), "{} missing (scripts/test.sh fetches it)", model.display());
    let inference = bin("inference", "inference");
    let router = bin("router", "router");
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().unwrap();

    let inf_port = free_port();
    let inf = Proc::spawn(
        "inference",
        Command::new(&inference).args([
            "--model",
            model.to_str().unwrap(),
            "--model-id",
            "m1",
            "--host",
            "127.0.0.1",
            "--port",
            &inf_port.to_string(),
            "--device",
            "cpu",
            "--max-concurrent",
            "2",
        ]),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !get_ok(&client, &format!("http://127.0.0.1:{inf_port}/health"), |v| v["status"] == "ok") {
        assert!(Instant::now() < deadline, "inference did not become healthy:\n{}", inf.tail());
        std::thread::sleep(Duration::from_millis(200));
    }

    let port = free_port();
    let backends = format!(r#"{{"m1":"http://127.0.0.1:{inf_port}"}}"#);
    let rt = Proc::spawn(
        "router",
        Command::new(&router)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--backends", &backends])
            .args(["--health-interval-ms", "200", "--rate-limit-rps", "0", "--ui-dir", "/nonexistent"])
            .env_remove("REDIS_URL")
            .env_remove("RESPONSE_LOG_DIR"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_ok(&client, &format!("http://127.0.0.1:{port}/health"), |v| v["healthy_backends"].as_u64() >= Some(1)) {
        assert!(Instant::now() < deadline, "router did not see a healthy backend:\n{}", rt.tail());
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = std::env::temp_dir().join(format!("loadtest-e2e-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(env!("CARGO_BIN_EXE_load_test"))
        .args(["--url", &format!("http://127.0.0.1:{port}"), "--workload", "short", "--concurrency", "2"])
        .args([
            "--requests",
            "6",
            "--max-tokens",
            "8",
            "--seed",
            "3",
            "--timeout",
            "60",
            "--out",
            out.to_str().unwrap(),
        ])
        .env_remove("POLYLLM_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "load_test failed: {stdout}\n{stderr}\nrouter:\n{}\ninference:\n{}",
        rt.tail(),
        inf.tail()
    );
    assert!(stdout.contains("lat p50"), "no summary table: {stdout}");

    let req_csv = out.join("requests.csv");
    let text = std::fs::read_to_string(&req_csv).unwrap();
    assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
    let recs = record::read_requests(&req_csv).unwrap();
    assert_eq!(recs.len(), 6);
    for r in &recs {
        assert_eq!(r.status, "ok", "{r:?}");
        assert!(r.error.is_empty());
        assert_eq!(r.workload, "short");
        assert_eq!(r.concurrency, 2);
        assert_eq!(r.model, "gemma-3-270m");
        assert_eq!(r.backend, "m1");
        assert_eq!(r.device, "cpu");
        assert!(!r.request_id.is_empty());
        assert!(!r.cache_hit, "no seed is sent, so nothing is cacheable");
        assert_eq!(r.routes, 1, "one healthy backend: no fallback");
        let (ttft, lat) = (r.ttft_ms.unwrap(), r.latency_ms.unwrap());
        assert!(ttft > 0.0 && ttft <= lat, "{r:?}");
        let n = r.completion_tokens.unwrap();
        assert!((1..=8).contains(&n), "{r:?}");
        assert!(r.prompt_tokens.unwrap() > 0);
    }

    let rows: Vec<benchmarks::stats::SummaryRow> =
        csv::Reader::from_path(out.join("summary.csv")).unwrap().deserialize().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "{rows:?}"); // ALL + gemma
    assert_eq!((rows[0].model.as_str(), rows[0].count, rows[0].errors), ("ALL", 6, 0));
    assert_eq!(rows[1].model, "gemma-3-270m");
    assert!(rows[0].throughput_rps > 0.0 && rows[0].latency_p99_ms >= rows[0].latency_p50_ms);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["requests"], 6);
    std::fs::remove_dir_all(&out).ok();
}
