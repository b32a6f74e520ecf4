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
    let ports = config(&["docker-compose.yml", "docker-compose.ports.yml"]);
    let cat = Catalog::load(&repo().join("models.toml")).unwrap();
    for b in &cat.backends {
        let s = service(&cfg, &b.id);
        assert!(s.contains(&format!("MODEL: /models/{}", b.file)), "{}: wrong model\n{s}", b.id);
        assert!(
            s.contains(&format!("PORT: '{}'", b.port)) || s.contains(&format!("PORT: \"{}\"", b.port)),
            "{}: port\n{s}",
            b.id
        );
        // Reachable only through the router (its keys and limits) unless the debug override is used.
        assert!(!s.contains("published") && !s.contains("ports:"), "{}: publishes a port on the host\n{s}", b.id);
        let debug = service(&ports, &b.id);
        assert!(
            debug.contains(&format!("published: {}", b.port)) || debug.contains(&format!(":{0}:{0}", b.port)),
            "{}: debug port\n{debug}",
            b.id
        );
        assert!(s.contains("service_completed_successfully"), "{}: must wait for the models init service\n{s}", b.id);
        assert!(s.contains("healthcheck"), "{}: no healthcheck", b.id);
        let want = if b.device == Slot::Gpu { "DEVICE: auto" } else { "DEVICE: cpu" };
        assert!(s.contains(want), "{}: expected {want}\n{s}", b.id);
    }
    let router = service(&cfg, "router");
    assert!(router.contains("REDIS_URL: redis://redis:6379") && router.contains("service_healthy"), "{router}");
    // One sick model service must not keep the gateway down: the router waits for none of them.
    for b in &cat.backends {
        assert!(!router.contains(&format!("\n      {}:\n", b.id)), "router depends on {}\n{router}", b.id);
    }
    // The closed loop: what `trainer train` writes is the directory the router hot-reloads.
    assert!(router.contains("- router-model:/app/router/model"), "{router}");
    let trainer = service(&cfg, "trainer");
    assert!(trainer.contains("- router-model:/data/router/model"), "{trainer}");
    let load_test = service(&cfg, "load_test");
    assert!(load_test.contains("LOADTEST_URL: http://router:8080"), "load_test reads LOADTEST_URL\n{load_test}");
    // X-Forwarded-For is believed only from the ui profile's nginx: its fixed address is the
    // router's one trusted proxy (and lies in the network's fixed subnet).
    let field = |block: &str, key: &str| -> String {
        let line =
            block.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("no {key} in\n{block}"));
        line.trim_start()[key.len()..].trim().trim_matches(|c| c == '\'' || c == '"').to_string()
    };
    let ui_ip = field(service(&cfg, "ui"), "ipv4_address:");
    assert_eq!(field(router, "TRUSTED_PROXIES:"), ui_ip, "the router must trust exactly the ui proxy's address");
    let subnet: ipnet::Ipv4Net = field(&cfg, "- subnet:").parse().unwrap();
    assert!(subnet.contains(&ui_ip.parse::<std::net::Ipv4Addr>().unwrap()), "{ui_ip} is outside {subnet}");
    for svc in ["redis", "models", "prometheus", "grafana", "node-exporter"] {
        service(&cfg, svc);
    }
    assert!(
        service(&cfg, "grafana").contains("GF_AUTH_ANONYMOUS_ENABLED: 'true'")
            || service(&cfg, "grafana").contains("GF_AUTH_ANONYMOUS_ENABLED: \"true\"")
    );

    let gpu = config(&["docker-compose.yml", "docker-compose.gpu.yml"]);
    for id in ["m4", "m5"] {
        let s = service(&gpu, id);
        assert!(
            s.contains("inference-cuda.Dockerfile") && s.contains("DEVICE: cuda") && s.contains("nvidia"),
            "{id}:\n{s}"
        );
    }
    assert!(service(&gpu, "m1").contains("docker/inference.Dockerfile"));
    service(&gpu, "dcgm-exporter");

    for f in ["inference", "inference-cuda", "router", "trainer", "load_test"] {
        let p = repo().join(format!("docker/{f}.Dockerfile"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{} missing", p.display()));
        assert!(text.contains("USER 10001"), "{f}: must run as a non-root user");
        assert!(text.contains("HEALTHCHECK"), "{f}: no HEALTHCHECK line");
        assert!(
            text.matches("\nFROM ").count() >= 2 && (text.contains(" AS build") || text.contains(" AS bins-source")),
            "{f}: not multi-stage"
        );
        if f != "inference-cuda" {
            // Binaries compiled in the image by default, or taken from the host (compose test).
            assert!(
                text.contains(" AS bins-source")
                    && text.contains(" AS bins-host")
                    && text.contains("FROM bins-${BINARIES} AS bins"),
                "{f}: no BINARIES switch"
            );
        }
    }
    assert!(repo().join(".dockerignore").is_file());
}
