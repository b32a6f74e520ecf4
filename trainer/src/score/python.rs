//! Running untrusted Python (model answers plus tests) in a sandboxed `python3` subprocess.
//!
//! Each run gets a fresh temporary directory as its working directory, a cleared environment and
//! `-I -S` (isolated mode, no site-packages). Three layers, the strongest this machine allows
//! ([`Isolation`], reported in [`RunOutput::isolation`]):
//!
//! * **bubblewrap** (`bwrap`, Debian package `bubblewrap`; probed once per interpreter by running
//!   the interpreter under the exact flags of a real run, see `bwrap_args`): new user, mount, pid,
//!   network, ipc and uts namespaces and no capabilities. The program sees a read-only `/usr`,
//!   `/etc`, `/bin`, `/lib*` and the interpreter's own prefix, a 64 MiB private tmpfs on `/tmp`, its
//!   sandbox directory read-write on `/sandbox` (its working directory), a fresh `/proc` and a
//!   minimal read-only `/dev`; everything else of the host (home directories, `/run` with its
//!   sockets, the trainer's files, other processes) is absent, and the rest of `/` is read-only.
//!   The only network is its own loopback. With `--die-with-parent` and the pid namespace, every
//!   process of the run dies with it. A trainer running as root runs the program as uid 0 of its
//!   user namespace, without capabilities.
//! * **network namespace** (`unshare -rn`), when bubblewrap is missing or cannot create namespaces
//!   (inside an unprivileged container, say): the program has the trainer's filesystem view and
//!   rights. A warning is logged once.
//! * **preamble only**, when neither works: only the preamble below stands between the program and
//!   the host.
//!
//! In every case a preamble ([`SANDBOX_PY`]) runs before the program: it sets resource limits (CPU
//! seconds, 512 MiB address space, no core files, 16 MiB file size and, under bubblewrap, 64
//! processes and threads: `RLIMIT_NPROC` is counted per user namespace there, and is not enforced
//! at all for uid 0, so it is a bound only for a non-root trainer), installs a seccomp filter
//! under which creating a process (`fork`, `vfork`, `clone` without `CLONE_THREAD`, `clone3`) and
//! `execve` fail (threads still work), replaces `socket.socket` and friends with stubs that raise,
//! and disables process-spawning and signalling functions (`os.system`, `os.fork`,
//! `subprocess.Popen`, `os.kill`, ...). The Python-level stubs are easy to get around (`posix.fork`,
//! the `_socket.socket` type found through `object.__subclasses__()`); the seccomp filter and the
//! namespaces are what hold. The program runs in its own process group, and the wall-clock timeout
//! is enforced here: on expiry the whole group is killed with SIGKILL. Stdout and stderr go to files
//! in the temporary directory (at most [`MAX_OUTPUT`] bytes of each are read back).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Bytes of stdout/stderr read back per run.
pub const MAX_OUTPUT: u64 = 64 * 1024;

/// `RLIMIT_NPROC` of a run under bubblewrap (processes and threads of its user namespace).
pub const MAX_PROCESSES: u32 = 64;

/// Size of the private `/tmp` of a run under bubblewrap.
pub const TMP_BYTES: u64 = 64 * 1024 * 1024;

/// Where the sandbox directory appears under bubblewrap.
pub const SANDBOX_MOUNT: &str = "/sandbox";

/// The preamble: `python3 -I -S _sandbox.py <cpu_seconds> prog.py <max_processes, 0: no limit>`.
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
if len(sys.argv) > 3 and int(sys.argv[3]) > 0:
    _limit(resource.RLIMIT_NPROC, int(sys.argv[3]))

def _no_new_processes():
    # A seccomp filter, for this process and all it may start: fork, vfork, clone without
    # CLONE_THREAD (EAGAIN), clone3 (ENOSYS: glibc then creates threads with clone), execve,
    # execveat, unshare and setns (EPERM: no new program, no new namespaces, so no unbounded tmpfs
    # of its own either), and every syscall of another ABI (x32, i386) fail. Irreversible.
    import ctypes, struct
    machine = os.uname().machine
    if machine == "x86_64":
        arch, clone, forks, denied = 0xC000003E, 56, (57, 58), (59, 322, 272, 308)
    elif machine == "aarch64":
        arch, clone, forks, denied = 0xC00000B7, 220, (), (221, 281, 97, 268)
    else:
        return
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, eagain, enosys = 0x7FFF0000, 0x50000 | 1, 0x50000 | 11, 0x50000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, eperm), (ld, 0, 0, 0),
            (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm), (jeq, 0, 1, 435), (ret, 0, 0, enosys)]
    for nr in forks:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eagain)]
    for nr in denied:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 1, 0, clone), (ret, 0, 0, allow), (ld, 0, 0, 16), (jset, 1, 0, 0x10000),
             (ret, 0, 0, eagain), (ret, 0, 0, allow)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = _Fprog(len(prog), ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "installing the seccomp filter")

try:
    _no_new_processes()
except Exception:
    pass  # no ctypes, or no seccomp: the probe in python.rs reports it

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

/// How a run was isolated from the host, weakest first (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isolation {
    /// Only the preamble (limits, seccomp filter, Python-level stubs): the trainer's filesystem,
    /// rights and network.
    PreambleOnly,
    /// The preamble plus an empty network namespace (`unshare -rn`): the trainer's filesystem and
    /// rights.
    NetNamespace,
    /// The preamble inside bubblewrap: read-only system directories, a private `/tmp`, no host
    /// network, its own pid namespace.
    Bubblewrap,
}

/// What a sandboxed run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The exit code; `None` when killed by a signal (timeout included). Under bubblewrap a program
    /// killed by signal `n` (its CPU limit, say) shows as exit code `128 + n`.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// How the run was isolated.
    pub isolation: Isolation,
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

/// System directories visible (read-only) under bubblewrap; a symlink among them (merged `/usr`)
/// is recreated as the same symlink.
const SYSTEM_DIRS: &[&str] = &["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// A bubblewrap setup that ran an interpreter.
#[derive(Debug)]
struct Bwrap {
    bin: PathBuf,
    /// The interpreter with symlinks resolved (what runs inside).
    python: PathBuf,
    /// Its install directories outside [`SYSTEM_DIRS`] (a pyenv or venv prefix), bound read-only.
    python_dirs: Vec<PathBuf>,
    /// Whether this bwrap has `--size` (Debian 12's 0.8 has it), for a bounded tmpfs on `/tmp`;
    /// without it `/tmp` is a directory in the sandbox directory.
    sized_tmpfs: bool,
}

/// Whether runs with `python` get bubblewrap here; the error says why not. Probed once per
/// interpreter (by running it under the same flags as a real run) and cached.
pub fn bubblewrap_status(python: &Path) -> Result<(), String> {
    bubblewrap(python).map(|_| ())
}

/// Per interpreter: its bubblewrap setup, or why there is none.
type BwrapCache = Mutex<HashMap<PathBuf, Result<Arc<Bwrap>, String>>>;

fn bubblewrap(python: &Path) -> Result<Arc<Bwrap>, String> {
    static CACHE: OnceLock<BwrapCache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = cache.get(python) {
        return found.clone();
    }
    let found = probe_bubblewrap(python).map(Arc::new).map_err(|e| format!("{e:#}"));
    cache.insert(python.to_path_buf(), found.clone());
    found
}

fn probe_bubblewrap(python: &Path) -> anyhow::Result<Bwrap> {
    let bin = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("bwrap is not installed")?;
    let real = std::fs::canonicalize(python).with_context(|| format!("resolving {}", python.display()))?;
    let python_dirs = python_dirs(&real)?;
    let help = Command::new(&bin).arg("--help").stdin(Stdio::null()).output().context("running bwrap --help")?;
    let sized_tmpfs = String::from_utf8_lossy(&help.stdout).contains("--size");
    let b = Bwrap { bin, python: real, python_dirs, sized_tmpfs };
    let marker = nonce();
    let probe = format!(
        "import os\nseccomp = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')]\nprint({marker:?}, os.getcwd(), *seccomp)\n"
    );
    let out = run_in(python, &Mode::Bubblewrap(&b), &probe, Duration::from_secs(30))?;
    let report = out.stdout.lines().find_map(|l| l.strip_prefix(marker.as_str())).map(str::split_whitespace);
    let Some(report) = report.filter(|_| out.exit_code == Some(0)) else {
        bail!(
            "{} could not run {}: exit {:?}: {}",
            b.bin.display(),
            b.python.display(),
            out.exit_code,
            out.error_line()
        );
    };
    let report: Vec<&str> = report.collect();
    if report.first() != Some(&SANDBOX_MOUNT) {
        bail!("the probe under {} reported {report:?}", b.bin.display());
    }
    if report.get(1) != Some(&"2") {
        static SECCOMP_WARNING: Once = Once::new();
        SECCOMP_WARNING.call_once(|| {
            tracing::warn!(
                "the sandbox preamble could not install its seccomp filter (no ctypes in {}?): scored code may fork; \
                 only RLIMIT_NPROC (not enforced for root) and the timeout bound it",
                b.python.display()
            )
        });
    }
    Ok(b)
}

/// The install directories of interpreter `real` (symlinks resolved) that [`SYSTEM_DIRS`] do not
/// already cover, outermost only.
fn python_dirs(real: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(real)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys\nfor p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix): print(p)",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", real.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", real.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let system: Vec<PathBuf> = SYSTEM_DIRS.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
    let mut dirs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .chain(real.parent().map(Path::to_path_buf))
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .filter(|d| d.parent().is_some() && !system.iter().any(|s| d.starts_with(s)))
        .collect();
    // Path order is by component, so an ancestor comes before what it holds.
    dirs.sort();
    let mut outermost: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !outermost.iter().any(|o| d.starts_with(o)) {
            outermost.push(d);
        }
    }
    Ok(outermost)
}

/// bwrap's options for a run whose sandbox directory is `dir`, up to and including `--`. `/tmp` is
/// a tmpfs of [`TMP_BYTES`] when `sized_tmpfs`, else `dir/_tmp` (which must exist).
fn bwrap_args(python_dirs: &[PathBuf], sized_tmpfs: bool, dir: &Path, env: &[(&str, &str)]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| a.extend(items.iter().map(|i| i.as_ref().to_os_string()));
    // New user, mount, pid, network, ipc, uts (and cgroup) namespaces, no capabilities, a new
    // session (no TIOCSTI into the trainer's terminal), killed with the trainer.
    push(&[&"--unshare-all", &"--die-with-parent", &"--new-session", &"--cap-drop", &"ALL"]);
    for d in SYSTEM_DIRS {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(d) {
                    push(&[&"--symlink", &target, d]);
                }
            }
            Ok(m) if m.is_dir() => push(&[&"--ro-bind", d, d]),
            _ => {}
        }
    }
    for d in python_dirs {
        push(&[&"--ro-bind", d, d]);
    }
    push(&[&"--proc", &"/proc", &"--dev", &"/dev", &"--remount-ro", &"/dev"]);
    if sized_tmpfs {
        push(&[&"--size", &TMP_BYTES.to_string(), &"--tmpfs", &"/tmp"]);
    } else {
        push(&[&"--bind", &dir.join("_tmp"), &"/tmp"]);
    }
    push(&[&"--bind", &dir, &SANDBOX_MOUNT, &"--chdir", &SANDBOX_MOUNT]);
    // The sandbox's own root (where the mount points above were made) read-only too.
    push(&[&"--remount-ro", &"/", &"--clearenv"]);
    for (k, v) in env {
        push(&[&"--setenv", k, v]);
    }
    push(&[&"--"]);
    a
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
    run_sandboxed_with(python, program, timeout, Isolation::Bubblewrap)
}

/// [`run_sandboxed`] isolated at most as strongly as `strongest` (the tests use a weaker layer to
/// show what a stronger one stops). Falling back from bubblewrap when it was asked for is logged
/// once.
pub fn run_sandboxed_with(
    python: &Path,
    program: &str,
    timeout: Duration,
    strongest: Isolation,
) -> anyhow::Result<RunOutput> {
    if strongest >= Isolation::Bubblewrap {
        match bubblewrap(python) {
            Ok(b) => return run_in(python, &Mode::Bubblewrap(&b), program, timeout),
            Err(why) => {
                static FALLBACK_WARNING: Once = Once::new();
                FALLBACK_WARNING.call_once(|| {
                    tracing::warn!(
                        "scored code runs WITHOUT filesystem isolation ({why}): it can read, change and delete \
                         whatever the trainer's user can. Install bubblewrap (apt-get install bubblewrap) and \
                         allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; in \
                         Docker, a seccomp profile that allows clone/unshare with CLONE_NEWUSER)"
                    )
                });
            }
        }
    }
    if strongest >= Isolation::NetNamespace {
        if let Some(unshare) = unshare_path() {
            return run_in(python, &Mode::NetNamespace(unshare), program, timeout);
        }
    }
    run_in(python, &Mode::PreambleOnly, program, timeout)
}

enum Mode<'a> {
    Bubblewrap(&'a Bwrap),
    NetNamespace(&'a Path),
    PreambleOnly,
}

fn run_in(python: &Path, mode: &Mode, program: &str, timeout: Duration) -> anyhow::Result<RunOutput> {
    let dir = tempfile::Builder::new().prefix("polyllm-py-").tempdir().context("creating a sandbox dir")?;
    std::fs::write(dir.path().join("_sandbox.py"), SANDBOX_PY).context("writing the sandbox preamble")?;
    std::fs::write(dir.path().join("prog.py"), program).context("writing the program")?;
    let out_path = dir.path().join("_stdout");
    let err_path = dir.path().join("_stderr");
    let stdout = File::create(&out_path).context("creating the stdout file")?;
    let stderr = File::create(&err_path).context("creating the stderr file")?;
    let cpu_secs = (timeout.as_secs_f64().ceil() as u64 + 1).to_string();
    let home = match mode {
        Mode::Bubblewrap(_) => SANDBOX_MOUNT.to_string(),
        _ => dir.path().to_string_lossy().into_owned(),
    };
    let env =
        [("PATH", "/usr/bin:/bin"), ("HOME", home.as_str()), ("LANG", "C.UTF-8"), ("PYTHONDONTWRITEBYTECODE", "1")];
    // RLIMIT_NPROC counts per user and user namespace: outside a namespace of its own it would
    // count the trainer's own threads too.
    let max_processes = match mode {
        Mode::Bubblewrap(_) => MAX_PROCESSES,
        _ => 0,
    };

    let (mut cmd, isolation) = match mode {
        Mode::Bubblewrap(b) => {
            let mut c = Command::new(&b.bin);
            if !b.sized_tmpfs {
                std::fs::create_dir(dir.path().join("_tmp")).context("creating the sandbox's /tmp")?;
            }
            c.args(bwrap_args(&b.python_dirs, b.sized_tmpfs, dir.path(), &env)).arg(&b.python);
            (c, Isolation::Bubblewrap)
        }
        Mode::NetNamespace(unshare) => {
            let mut c = Command::new(unshare);
            c.arg("-rn").arg(python);
            (c, Isolation::NetNamespace)
        }
        Mode::PreambleOnly => (Command::new(python), Isolation::PreambleOnly),
    };
    cmd.args(["-I", "-S", "_sandbox.py", &cpu_secs, "prog.py", &max_processes.to_string()])
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if !matches!(mode, Mode::Bubblewrap(_)) {
        cmd.envs(env);
    }

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
    // Whatever the program left running in its group goes too (under bubblewrap, killing bwrap
    // ends its pid namespace, and with it every process of the run).
    kill_group(pgid);
    let elapsed = start.elapsed();
    Ok(RunOutput {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        stdout: read_capped(&out_path),
        stderr: read_capped(&err_path),
        elapsed,
        isolation,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_shows_only_system_dirs_the_interpreter_and_the_sandbox() {
        let pydir = PathBuf::from("/opt/py");
        let args: Vec<String> = bwrap_args(&[pydir], true, Path::new("/tmp/polyllm-py-x"), &[("HOME", SANDBOX_MOUNT)])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after =
            |flag: &str| -> Vec<&[String]> { args.windows(3).filter(|w| w[0] == flag).map(|w| &w[1..]).collect() };
        for w in after("--ro-bind") {
            assert_eq!(w[0], w[1]);
            assert!(SYSTEM_DIRS.contains(&w[0].as_str()) || w[0] == "/opt/py", "{w:?}");
        }
        assert_eq!(after("--bind"), vec![&["/tmp/polyllm-py-x".to_string(), SANDBOX_MOUNT.to_string()][..]]);
        for flag in ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        let s = args.join(" ");
        assert!(s.contains(&format!("--size {TMP_BYTES} --tmpfs /tmp")), "{s}");
        assert!(s.contains("--cap-drop ALL") && s.contains("--setenv HOME /sandbox"), "{s}");
        // The root is made read-only after every mount point is in place, and `--` ends the options.
        let ro_root = args.windows(2).position(|w| w[0] == "--remount-ro" && w[1] == "/").expect("--remount-ro /");
        let last_mount = args.iter().rposition(|a| a.ends_with("bind") || a == "--tmpfs" || a == "--symlink").unwrap();
        assert!(ro_root > last_mount, "{s}");
        assert_eq!(args.last().map(String::as_str), Some("--"));
        // Without `--size`, /tmp is a directory of the run's own.
        let s = bwrap_args(&[], false, Path::new("/tmp/polyllm-py-x"), &[])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(s.contains("--bind /tmp/polyllm-py-x/_tmp /tmp") && !s.contains("--tmpfs"), "{s}");
    }

    #[test]
    fn python_dirs_are_outside_the_system_dirs_and_disjoint() {
        let real = std::fs::canonicalize(resolve_python("python3").expect("python3")).unwrap();
        let dirs = python_dirs(&real).unwrap();
        let system: Vec<PathBuf> = SYSTEM_DIRS.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
        for d in &dirs {
            assert!(d.is_absolute() && d != Path::new("/"), "{d:?}");
            assert!(!system.iter().any(|s| d.starts_with(s)), "{d:?} is under a system dir");
            assert_eq!(dirs.iter().filter(|o| d.starts_with(o)).count(), 1, "{dirs:?} nest");
        }
        // The interpreter itself is inside one of them or a system dir.
        assert!(dirs.iter().chain(&system).any(|d| real.starts_with(d)), "{real:?} not covered by {dirs:?}");
    }
}
