//! `polyllm up --backends m1 --no-build` with the workspace's debug binaries: the router answers
//! through the real m1, a killed model service is restarted, and SIGTERM stops every child.
mod support;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// The latest pid the launcher reported for each service ("started <id> pid=<n>"), and all of them.
fn pids(out: &str) -> (BTreeMap<String, u32>, Vec<u32>) {
    let mut latest = BTreeMap::new();
    let mut all = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.split("started ").nth(1) {
            let mut it = rest.split_whitespace();
            if let (Some(id), Some(pid)) = (it.next(), it.next().and_then(|p| p.strip_prefix("pid="))) {
                if let Ok(pid) = pid.parse::<u32>() {
                    latest.insert(id.to_string(), pid);
                    all.push(pid);
                }
            }
        }
    }
    (latest, all)
}

#[test]
fn up_serves_restarts_and_stops_cleanly() {
    bin("inference");
    bin("router");
    gemma();
    let m1_port = free_port();
    let offset = m1_port.checked_sub(8101).expect("free port above 8101");
    let router_port = free_port();
    let redis_port = free_port();
    let base = format!("http://127.0.0.1:{router_port}");

    let mut launcher = Proc::spawn(
        "polyllm",
        Command::new(env!("CARGO_BIN_EXE_polyllm"))
            .current_dir(repo())
            .env_remove("REDIS_URL")
            .env("POLYLLM_REDIS_PORT", redis_port.to_string())
            .args(["up", "--backends", "m1", "--no-build", "--threads", "1"])
            .arg("--catalog")
            .arg(repo().join("models.toml"))
            .arg("--models-dir")
            .arg(models_dir())
            .args(["--port-offset", &offset.to_string(), "--router-port", &router_port.to_string()]),
    );

    // The router is up once it reports a healthy backend; the launcher then prints the URL.
    wait_for(&format!("{base}/health"), Duration::from_secs(240), "the router with a healthy m1", |s, b| {
        s == 200 && b.contains("\"healthy_backends\":1")
    });
    let end = Instant::now() + Duration::from_secs(30);
    while !launcher.output().contains(&format!("polyllm is up: {base}")) {
        launcher.assert_running();
        assert!(Instant::now() < end, "the launcher never printed the URL:\n{}", launcher.output());
        std::thread::sleep(Duration::from_millis(200));
    }

    let (status, body) = generate(&base, "def add(a, b):", "launcher-test");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("event: token") && body.contains("event: done"), "not a token stream:\n{body}");
    assert!(body.contains("\"model_id\":\"m1\""), "{body}");

    let (latest, _) = pids(&launcher.output());
    for id in ["m1", "router"] {
        assert!(latest.contains_key(id), "no pid for {id}:\n{}", launcher.output());
    }
    if which_redis() {
        assert!(latest.contains_key("redis"), "redis-server exists but was not started:\n{}", launcher.output());
    }

    // A crashed model service is restarted.
    let old = latest["m1"];
    unsafe {
        libc::kill(old as i32, libc::SIGKILL);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let new = loop {
        launcher.assert_running();
        if let Some(&p) = pids(&launcher.output()).0.get("m1") {
            if p != old {
                break p;
            }
        }
        assert!(Instant::now() < end, "m1 was not restarted:\n{}", launcher.output());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!process_alive(old));
    wait_for(&format!("http://127.0.0.1:{m1_port}/health"), Duration::from_secs(180), "the restarted m1", |s, _| {
        s == 200
    });
    assert!(process_alive(new));

    // SIGTERM: every child stops, the launcher exits 0.
    let (_, all) = pids(&launcher.output());
    launcher.signal(libc::SIGTERM);
    let status = launcher
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("launcher did not exit:\n{}", launcher.output()));
    assert!(status.success(), "launcher exit status {status}:\n{}", launcher.output());
    std::thread::sleep(Duration::from_millis(300));
    let alive: Vec<u32> = all.iter().copied().filter(|p| process_alive(*p)).collect();
    assert!(alive.is_empty(), "children still running after the launcher exited: {alive:?}");
    for needle in [format!("--port {m1_port}"), format!("--port {router_port}"), format!("--port {redis_port}")] {
        let left = processes_with(&needle);
        assert!(left.is_empty(), "orphan processes: {left:?}");
    }
    let out = launcher.output();
    assert!(out.contains("all services stopped"), "{out}");
    assert!(
        out.contains("[m1] ") && out.contains("[router] "),
        "child output is not prefixed with the service id:\n{out}"
    );
}

fn which_redis() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false)
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_polyllm"))
        .current_dir(repo())
        .args(["up", "--backends", "m9", "--no-build"])
        .arg("--catalog")
        .arg(repo().join("models.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend \"m9\"") && err.contains("m1, m2, m3, m4, m5"), "{err}");
}
