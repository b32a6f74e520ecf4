//! Test harness: real child processes (redis-server, the inference binary, the router, the stub
//! backend) on free ports, killed when their handle drops. Inference processes that several tests
//! share are started once per test binary and killed when the binary exits.
#![allow(dead_code)]
use polyllm_common::sse::{SseEvent, SseParser};
use serde_json::Value;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (and reaped) on drop. Its output goes to a log file kept for debugging.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let log = std::env::temp_dir().join(format!("router-test-{name}-{}.log", std::process::id()));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child: Some(child), name: name.to_string(), log }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process has exited (it is then reaped).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).no_proxy().build().unwrap()
}

// ---------------------------------------------------------------- redis

pub struct Redis {
    pub proc: Option<Proc>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut r = Redis { proc: None, port };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let bin = which("redis-server").expect("redis-server not installed: apt-get install -y redis-server");
        let p = Proc::spawn(
            &format!("redis-{}", self.port),
            Command::new(bin).args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ]),
        );
        let port = self.port;
        wait_for("redis", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        self.proc = Some(p);
    }

    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a hung Redis whose sockets stay open.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.proc.as_ref().expect("redis is running").pid();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Runs one command with the redis crate (a real client, not the router).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("KEYS").arg(pattern).query_async(&mut c).await.unwrap()
        })
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.is_file())
}

// ---------------------------------------------------------------- inference

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

/// The inference binary; built with `cargo build -p inference` when missing.
pub fn inference_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = target_dir().join("debug").join("inference");
        if !bin.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo).args(["build", "-p", "inference"]).current_dir(workspace()).status().unwrap();
            assert!(st.success(), "cargo build -p inference failed");
        }
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// Another workspace binary (`trainer`), built with `cargo build -p PACKAGE` when missing.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let bin = target_dir().join("debug").join(name);
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo).args(["build", "-p", package]).current_dir(workspace()).status().unwrap();
        assert!(st.success(), "cargo build -p {package} failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

pub struct Inference {
    pub proc: Proc,
    pub id: String,
    pub port: u16,
}

impl Inference {
    pub fn start(id: &str, model_file: &str) -> Inference {
        Inference::start_with(id, model_file, &[])
    }

    /// [`Inference::start`] with more `(flag, value)` pairs; one of the defaults (`--context 2048`,
    /// `--max-concurrent 2`) given again is replaced.
    pub fn start_with(id: &str, model_file: &str, extra: &[(&str, &str)]) -> Inference {
        let port = free_port();
        let model = workspace().join("models").join(model_file);
        assert!(model.is_file(), "{} missing", model.display());
        let port_s = port.to_string();
        let mut flags: Vec<(&str, &str)> = vec![
            ("--model", model.to_str().unwrap()),
            ("--model-id", id),
            ("--port", &port_s),
            ("--host", "127.0.0.1"),
            ("--device", "cpu"),
            ("--context", "2048"),
            ("--max-concurrent", "2"),
        ];
        flags.retain(|(f, _)| !extra.iter().any(|(e, _)| e == f));
        flags.extend_from_slice(extra);
        let proc = Proc::spawn(
            &format!("inference-{id}-{port}"),
            Command::new(inference_bin()).args(flags.iter().flat_map(|(f, v)| [*f, *v])),
        );
        let mut inf = Inference { proc, id: id.to_string(), port };
        let url = inf.url();
        let c = http();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if c.get(format!("{url}/health")).send().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(!inf.proc.exited(), "inference {id} exited at start:\n{}", inf.proc.log_tail());
            assert!(Instant::now() < deadline, "inference {id} did not become healthy:\n{}", inf.proc.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
        inf
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests this backend has finished (its own `model_requests_total`).
    pub fn requests_served(&self) -> f64 {
        self.metric("model_requests_total")
    }

    /// The sum of one of this backend's own metrics (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let text = http().get(format!("{}/metrics", self.url())).send().unwrap().text().unwrap();
        metric_sum(&text, name)
    }
}

/// Children started for the whole test binary, killed at exit.
static SHARED: Mutex<Vec<Child>> = Mutex::new(Vec::new());

extern "C" fn kill_shared() {
    if let Ok(mut v) = SHARED.lock() {
        for c in v.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
}

/// A backend shared by every test of this binary; never killed by a test.
pub struct SharedBackend {
    pub id: String,
    pub port: u16,
}

impl SharedBackend {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests_served(&self) -> f64 {
        let text = http().get(format!("{}/metrics", self.url())).send().unwrap().text().unwrap();
        metric_sum(&text, "model_requests_total")
    }
}

fn share(inf: Inference) -> SharedBackend {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| unsafe {
        atexit(kill_shared);
    });
    let Inference { mut proc, id, port } = inf;
    // The exit hook owns the child now.
    SHARED.lock().unwrap().push(proc.child.take().expect("running"));
    SharedBackend { id, port }
}

/// gemma-3-270m as backend `m1`, shared.
pub fn gemma() -> &'static SharedBackend {
    static B: OnceLock<SharedBackend> = OnceLock::new();
    B.get_or_init(|| share(Inference::start("m1", GEMMA)))
}

/// qwen2.5-coder-0.5b-instruct (it has a chat template) as backend `m2`, shared.
pub fn qwen() -> &'static SharedBackend {
    static B: OnceLock<SharedBackend> = OnceLock::new();
    B.get_or_init(|| share(Inference::start("m2", QWEN)))
}

/// A TCP pass-through in front of a backend that counts the `POST`s sent through it, so a test
/// can tell exactly whether its router touched the backend (the shared backend's own counters
/// also see the other tests).
pub struct CountingProxy {
    pub port: u16,
    pub posts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingProxy {
    pub fn start(upstream_port: u16) -> CountingProxy {
        use std::io::Write;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match std::io::Read::read(&mut client, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.fetch_add(buf[..n].windows(5).filter(|w| w == b"POST ").count(), Ordering::SeqCst);
                        if upstream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy { port, posts }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn posts(&self) -> usize {
        self.posts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- stub and router

/// The stub backend of `router_bench` (answers at once), e.g. to stand in for a GPU backend.
pub fn stub(id: &str, device: &str) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        &format!("stub-{id}-{port}"),
        Command::new(env!("CARGO_BIN_EXE_router_bench")).args([
            "stub",
            "--port",
            &port.to_string(),
            "--model-id",
            id,
            "--model",
            "stub-100m",
            "--device",
            device,
        ]),
    );
    wait_for("stub", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    (p, port)
}

pub struct Router {
    pub proc: Proc,
    pub port: u16,
}

impl Router {
    /// Starts a router with `backends` (id -> URL) and extra `env`, and waits until every
    /// backend in `healthy` is admitted.
    pub fn start(backends: &[(&str, String)], env: &[(&str, String)], healthy: &[&str]) -> Router {
        let port = free_port();
        let map: serde_json::Map<String, Value> =
            backends.iter().map(|(id, url)| (id.to_string(), Value::from(url.clone()))).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("BACKENDS", Value::Object(map).to_string())
            .env("UI_DIR", "/nonexistent")
            .env("LOG_FORMAT", "json")
            .env("HEALTH_INTERVAL_MS", "500")
            .env_remove("REDIS_URL")
            .env_remove("RATE_LIMIT_RPS")
            .env_remove("RATE_LIMIT_BURST")
            .env_remove("FALLBACK_MODEL")
            .env("ROUTER_MODEL", "/nonexistent/router-model")
            .env_remove("ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = Router { proc: Proc::spawn(&format!("router-{port}"), &mut cmd), port };
        let c = http();
        let url = r.url();
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = c.get(format!("{url}/backends")).send() {
                let v: Value = resp.json().unwrap();
                let ok = healthy
                    .iter()
                    .all(|id| v["backends"].as_array().unwrap().iter().any(|b| b["id"] == *id && b["healthy"] == true));
                if ok {
                    break;
                }
                last = v.to_string();
            }
            assert!(Instant::now() < deadline, "router did not admit {healthy:?}: {last}\n{}", r.proc.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn metrics(&self) -> String {
        http().get(format!("{}/metrics", self.url())).send().unwrap().text().unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name)
    }
}

/// Sum of every sample of `name` whose line starts with it (labels included: `name{a="b"}`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                || (name.contains('{') && l.starts_with(name))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- requests

/// A finished `/generate`-style response.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub events: Vec<SseEvent>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    pub fn event(&self, name: &str) -> Option<Value> {
        self.events.iter().find(|e| e.event == name).map(|e| serde_json::from_str(&e.data).unwrap())
    }

    pub fn names(&self) -> Vec<String> {
        self.events.iter().map(|e| e.event.clone()).collect()
    }

    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.event == "token")
            .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["text"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http().post(url).header("content-type", "application/json").body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().unwrap();
    let events = if headers.get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream")) {
        SseParser::new().push(body.as_bytes())
    } else {
        Vec::new()
    };
    Answer { status, headers, events, body }
}
