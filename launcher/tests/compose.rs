//! The compose files are valid (docker-compose config, no engine needed) and agree with
//! models.toml; the Dockerfiles they name exist.
mod support;
use polyllm_common::catalog::{Catalog, Slot};
use std::process::Command;
use support::*;

fn config(files: &[&str]) -> String {
    let dc = require("docker-compose", "docker-compose");
    let mut cmd = Command::new(dc);
    cmd.current_dir(repo());
    for f in files {
        cmd.args(["-f", f]);
    }
    let q = cmd.args(["config", "-q"]).output().expect("docker-compose");
    assert!(q.status.success(), "docker-compose {files:?} config -q failed:\n{}", String::from_utf8_lossy(&q.stderr));
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(repo());
    for f in files {
        cmd.args(["-f", f]);
    }
    let out = cmd.arg("config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The block of one service in `docker-compose config` output (services are indented by 2).
fn service<'a>(cfg: &'a str, name: &str) -> &'a str {
    let start = cfg.find(&format!("\n  {name}:\n")).unwrap_or_else(|| panic!("no service {name} in\n{cfg}")) + 1;
    let rest = &cfg[start..];
    let mut end = rest.len();
    let mut off = 0;
    for (i, line) in rest.split_inclusive('\n').enumerate() {
        if i > 0 && !line.starts_with("   ") {
            end = off;
            break;
        }
        off += line.len();
    }
    &rest[..end]
}

#[test]
fn compose_files_are_valid_and_match_the_catalog() {
    let cfg = config(&["docker-compose.yml"]);
    let cat = Catalog::load(&repo().join("models.toml")).unwrap();
    for b in &cat.backends {
        let s = service(&cfg, &b.id);
        assert!(s.contains(&format!("MODEL: /models/{}", b.file)), "{}: wrong model\n{s}", b.id);
        assert!(s.contains(&format!("published: {}", b.port)) || s.contains(&format!("{0}:{0}", b.port)), "{}: port\n{s}", b.id);
        assert!(s.contains("service_completed_successfully"), "{}: must wait for the models init service\n{s}", b.id);
        assert!(s.contains("healthcheck"), "{}: no healthcheck", b.id);
        let want = if b.device == Slot::Gpu { "DEVICE: auto" } else { "DEVICE: cpu" };
        assert!(s.contains(want), "{}: expected {want}\n{s}", b.id);
    }
    let router = service(&cfg, "router");
    assert!(router.contains("REDIS_URL: redis://redis:6379") && router.contains("service_healthy"), "{router}");
    for svc in ["redis", "models", "prometheus", "grafana", "node-exporter"] {
        service(&cfg, svc);
    }
    assert!(service(&cfg, "grafana").contains("GF_AUTH_ANONYMOUS_ENABLED: 'true'") || service(&cfg, "grafana").contains("GF_AUTH_ANONYMOUS_ENABLED: \"true\""));

    let gpu = config(&["docker-compose.yml", "docker-compose.gpu.yml"]);
    for id in ["m4", "m5"] {
        let s = service(&gpu, id);
        assert!(s.contains("inference-cuda.Dockerfile") && s.contains("DEVICE: cuda") && s.contains("nvidia"), "{id}:\n{s}");
    }
    assert!(service(&gpu, "m1").contains("docker/inference.Dockerfile"));
    service(&gpu, "dcgm-exporter");

    for f in ["inference", "inference-cuda", "router", "trainer", "load_test"] {
        let p = repo().join(format!("docker/{f}.Dockerfile"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{} missing", p.display()));
        assert!(text.contains("USER 10001"), "{f}: must run as a non-root user");
        assert!(text.contains("HEALTHCHECK"), "{f}: no HEALTHCHECK line");
        assert!(text.matches("\nFROM ").count() >= 1 && text.contains(" AS build"), "{f}: not multi-stage");
    }
    assert!(repo().join(".dockerignore").is_file());
}
