//! Running untrusted Python (model answers plus tests) in a sandboxed `python3` subprocess.
//!
//! Each run gets a fresh temporary directory as its working directory, a cleared environment and
//! `-I -S` (isolated mode, no site-packages). A preamble ([`SANDBOX_PY`]) runs before the program:
//! it sets resource limits (CPU seconds, 512 MiB address space, no core files, 16 MiB file size),
//! replaces `socket.socket` and friends with stubs that raise, and disables process-spawning and
//! signalling functions (`os.system`, `os.fork`, `subprocess.Popen`, `os.kill`, ...). When
//! `unshare -rn` works on this machine the run also gets its own (empty) network namespace; when it
//! does not, the preamble alone blocks the network. The program runs in its own process group, and
//! the wall-clock timeout is enforced here: on expiry the whole group is killed with SIGKILL.
//! Stdout and stderr go to files in the temporary directory (at most [`MAX_OUTPUT`] bytes of each are
//! read back).

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Bytes of stdout/stderr read back per run.
pub const MAX_OUTPUT: u64 = 64 * 1024;

/// The preamble: `python3 -I -S _sandbox.py <cpu_seconds> prog.py`.
pub const SANDBOX_PY: &str = r#"import os, resource, sys

def _limit(res, value):
    try:
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        resource.setrlimit(res, (value, value))
    except (ValueError, OSError):
        pass

_limit(resource.RLIMIT_CPU, int(sys.argv[1]))
_limit(resource.RLIMIT_AS, 512 * 1024 * 1024)
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_FSIZE, 16 * 1024 * 1024)

def _denied(*args, **kwargs):
    raise PermissionError("disabled in the polyllm sandbox")

class _DeniedClass:
    def __init__(self, *args, **kwargs):
        raise PermissionError("disabled in the polyllm sandbox")

import socket, _socket
for _mod in (socket, _socket):
    for _name in ("socket", "SocketType"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _DeniedClass)
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
    if hasattr(socket, _name):
        setattr(socket, _name, _denied)
for _name in ("socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
    if hasattr(_socket, _name):
        setattr(_socket, _name, _denied)

import subprocess
subprocess.Popen = _DeniedClass
for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl",
              "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp",
              "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
              "setuid", "setgid", "chroot"):
    if hasattr(os, _name):
        setattr(os, _name, _denied)

_path = sys.argv[2]
with open(_path, encoding="utf-8") as _f:
    _src = _f.read()
sys.argv = [_path]
_globals = {"__name__": "candidate", "__builtins__": __builtins__}
exec(compile(_src, _path, "exec"), _globals)
"#;

/// What a sandboxed run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The exit code; `None` when killed by a signal (timeout included).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Whether the run had its own network namespace (`unshare -rn`).
    pub net_namespace: bool,
}

impl RunOutput {
    /// The last non-empty line of stderr (usually the exception), for score details.
    pub fn error_line(&self) -> String {
        self.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
    }
}

/// The real executable behind `cmd` (a name on `PATH` such as `python3`, or a path): asks the
/// interpreter for `sys.executable`, so shims (pyenv) still work once the environment is cleared.
pub fn resolve_python(cmd: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(cmd)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !p.is_absolute() || !p.exists() {
        bail!("{cmd} reported an unusable sys.executable {:?}", p);
    }
    Ok(p)
}

/// The `unshare` binary, if `unshare -rn` works here (probed once per process).
pub fn unshare_path() -> Option<&'static Path> {
    static PROBE: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let bin = ["/usr/bin/unshare", "/bin/unshare"].into_iter().map(PathBuf::from).find(|p| p.exists())?;
            let truebin = ["/usr/bin/true", "/bin/true"].into_iter().find(|p| Path::new(p).exists())?;
            let ok = Command::new(&bin)
                .args(["-rn", truebin])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(bin)
        })
        .as_deref()
}

/// A string unlikely to appear in a program's output by accident, to mark "ran to the end".
pub fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("__polyllm_{:x}_{:x}_{:x}__", nanos, std::process::id(), c)
}

/// Run `program` with `python` in the sandbox, killing it after `timeout` of wall-clock time.
/// Errors only when the run could not be set up or started; a crashing program is a normal result.
pub fn run_sandboxed(python: &Path, program: &str, timeout: Duration) -> anyhow::Result<RunOutput> {
    let dir = tempfile::Builder::new().prefix("polyllm-py-").tempdir().context("creating a sandbox dir")?;
    std::fs::write(dir.path().join("_sandbox.py"), SANDBOX_PY).context("writing the sandbox preamble")?;
    std::fs::write(dir.path().join("prog.py"), program).context("writing the program")?;
    let out_path = dir.path().join("_stdout");
    let err_path = dir.path().join("_stderr");
    let stdout = File::create(&out_path).context("creating the stdout file")?;
    let stderr = File::create(&err_path).context("creating the stderr file")?;
    let cpu_secs = timeout.as_secs_f64().ceil() as u64 + 1;

    let unshare = unshare_path();
    let mut cmd = match unshare {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.arg("-rn").arg(python);
            c
        }
        None => Command::new(python),
    };
    cmd.args(["-I", "-S", "_sandbox.py"])
        .arg(cpu_secs.to_string())
        .arg("prog.py")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);

    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", python.display()))?;
    let pgid = child.id() as libc::pid_t;
    let deadline = start + timeout;
    let mut sleep = Duration::from_millis(2);
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (Some(status), false),
            Ok(None) => {}
            Err(e) => {
                kill_group(pgid);
                let _ = child.wait();
                return Err(e).context("waiting for python");
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(pgid);
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(sleep.min(deadline - now));
        sleep = (sleep * 2).min(Duration::from_millis(25));
    };
    // Whatever the program left running in its group goes too.
    kill_group(pgid);
    let elapsed = start.elapsed();
    Ok(RunOutput {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        stdout: read_capped(&out_path),
        stderr: read_capped(&err_path),
        elapsed,
        net_namespace: unshare.is_some(),
    })
}

fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

fn read_capped(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(MAX_OUTPUT).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
