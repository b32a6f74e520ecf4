//! Helpers shared by the launcher's integration tests: paths, free ports, child processes whose
//! output is collected (and echoed, for the test log), HTTP polling.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where the workspace's binaries are (`inference`, `router` next to `polyllm`).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_polyllm")).parent().unwrap().to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p inference -p router` first)",
        p.display()
    );
    p
}

/// The models directory: $MODELS_DIR (relative to the repository) or <repo>/models.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("MODELS_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => repo().join(d),
        None => repo().join("models"),
    }
}

pub fn gemma() -> PathBuf {
    let p = models_dir().join("gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.is_file(),
        "{} is missing: fetch it with `cargo run -p polyllm-fetch --bin fetch-models -- --only gemma` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Fails the test, naming the Debian package, when `cmd` is not on PATH.
pub fn require(cmd: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(cmd)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!(
            "`{cmd}` is not installed: this test needs the Debian package `{package}` (apt-get install -y {package})"
        )
    })
}

/// A child process whose stdout+stderr lines are collected; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

fn collect<R: Read + Send + 'static>(r: R, name: String, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            eprintln!("<{name}> {line}");
            lines.lock().unwrap().push(line);
        }
    });
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), name.to_string(), lines.clone());
        collect(child.stderr.take().unwrap(), name.to_string(), lines.clone());
        Proc { name: name.to_string(), child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit (None on timeout).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Fails the test (with the process's output) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({s}):\n{}", self.name, self.output());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// Polls `url` until `ok(status, body)` holds; panics with `what` after `timeout`.
pub fn wait_for(url: &str, timeout: Duration, what: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let end = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < end {
        match c.get(url).send() {
            Ok(r) => {
                let s = r.status().as_u16();
                let body = r.text().unwrap_or_default();
                if ok(s, &body) {
                    return body;
                }
                last = format!("{s}: {body}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out after {timeout:?} waiting for {what} ({url}); last: {last}");
}

pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z (zombie) and X (dead) do not run.
        Ok(stat) => !matches!(stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()), Some("Z") | Some("X")),
        Err(_) => false,
    }
}

/// Pids of running processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) && process_alive(pid) {
            out.push((pid, cmd));
        }
    }
    out
}

/// POST /generate (SSE) and return the whole body.
pub fn generate(base: &str, prompt: &str, key: &str) -> (u16, String) {
    let r = client()
        .post(format!("{base}/generate"))
        .bearer_auth(key)
        .json(&serde_json::json!({"prompt": prompt, "max_tokens": 6, "temp": 0}))
        .send()
        .expect("POST /generate");
    let s = r.status().as_u16();
    (s, r.text().unwrap_or_default())
}
