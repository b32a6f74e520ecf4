//! The Kubernetes manifests (`deploy/k8s/`): both overlays render with `kubectl kustomize`, every
//! object of a built-in kind validates against the Kubernetes schemas (`kubernetes-validate
//! --strict`, PyPI), and what they run agrees with models.toml and the compose files. The
//! autoscalers' queries name only metrics that a live model service exports. (No cluster runs
//! here: nothing is applied. The KEDA ScaledObjects and the ServiceMonitor have no schema in
//! `kubernetes-validate`; their fields are checked below instead.)
mod support;
use polyllm_common::catalog::{Catalog, Slot};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;
use support::*;

const OVERLAYS: [&str; 2] = ["cpu", "gpu"];
/// Kinds without a schema in `kubernetes-validate` (custom resources), checked by hand below.
const CUSTOM_KINDS: [&str; 2] = ["ScaledObject", "ServiceMonitor"];

/// YAML (one or more documents) as JSON values, through PyYAML (installed with kubernetes-validate).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not read the YAML (pip install kubernetes-validate brings it)");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn render(overlay: &str) -> (String, Vec<Value>) {
    let kubectl = require("kubectl", "kubernetes-client");
    let out = Command::new(kubectl)
        .current_dir(repo())
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(format!("deploy/k8s/overlays/{overlay}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs(&yaml);
    (yaml, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

fn compose_services(file: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    yaml_docs(&text).remove(0)["services"].clone()
}

#[test]
fn both_overlays_render_and_every_object_validates() {
    require("kubernetes-validate", "python3-pip (pip install kubernetes-validate)");
    for overlay in OVERLAYS {
        let (yaml, docs) = render(overlay);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let out = Command::new("kubernetes-validate").arg("--strict").arg(&file).output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{overlay}: kubernetes-validate failed:\n{log}");
        let built_in = docs.iter().filter(|d| !CUSTOM_KINDS.contains(&d["kind"].as_str().unwrap())).count();
        let passed = log.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, built_in, "{overlay}: not every object was validated:\n{log}");
        for line in log.lines().filter(|l| l.starts_with("WARN")) {
            assert!(CUSTOM_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))), "{overlay}: {line}");
        }
        assert!(built_in >= 20, "{overlay}: only {built_in} objects");
    }
}

#[test]
fn manifests_agree_with_the_catalog_and_the_compose_files() {
    let cat = Catalog::load(&repo().join("models.toml")).unwrap();
    let compose = compose_services("docker-compose.yml");
    let compose_gpu = compose_services("docker-compose.gpu.yml");
    let cpu_image = compose["m1"]["image"].as_str().unwrap().to_string();
    let cuda_image = compose_gpu["m4"]["image"].as_str().unwrap().to_string();
    for overlay in OVERLAYS {
        let (_, docs) = render(overlay);
        let mut urls = serde_json::Map::new();
        for b in &cat.backends {
            let what = format!("{overlay}/{}", b.id);
            let d = find(&docs, "Deployment", &b.id);
            let pod = &d["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let e = env(c);
            // The same settings as the compose service of that id.
            let ce = &compose[&b.id]["environment"];
            for key in ["MODEL", "MODEL_ID", "MODEL_NAME", "PORT"] {
                assert_eq!(Some(e[key].as_str()), ce[key].as_str(), "{what}: {key} differs from docker-compose.yml");
            }
            assert_eq!(e["MODEL"], format!("/models/{}", b.file), "{what}");
            assert_eq!((e["MODEL_ID"].as_str(), e["MODEL_NAME"].as_str()), (b.id.as_str(), b.model.as_str()), "{what}");
            assert_eq!(e["PORT"], b.port.to_string(), "{what}");
            assert_eq!(c["ports"][0]["containerPort"], b.port, "{what}");
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(c[probe]["httpGet"]["path"], "/health", "{what}: {probe}");
            }
            // The init container fetches exactly this backend's file.
            let artifact = polyllm_fetch::artifacts().iter().find(|a| a.name == b.file).expect("an artifact");
            let init = pod["initContainers"][0]["command"].as_array().unwrap();
            let only = init.iter().skip_while(|a| *a != "--only").nth(1).and_then(|a| a.as_str());
            assert_eq!(only, Some(artifact.id.as_str()), "{what}: the init container fetches {only:?}");
            let gpu = overlay == "gpu" && b.device == Slot::Gpu;
            let (image, device) = if gpu { (&cuda_image, "cuda") } else { (&cpu_image, "cpu") };
            assert_eq!(c["image"].as_str(), Some(image.as_str()), "{what}");
            assert_eq!(e["DEVICE"], device, "{what}");
            assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"].as_i64(), gpu.then_some(1), "{what}");
            assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"].as_str(), gpu.then_some("true"), "{what}");
            let s = find(&docs, "Service", &b.id);
            assert_eq!(s["spec"]["ports"][0]["port"], b.port, "{what}: Service port");
            assert_eq!(s["spec"]["ports"][0]["name"], "http", "{what}: the ServiceMonitor scrapes the port named http");
            // Scaled on its own load.
            let so = find(&docs, "ScaledObject", &b.id);
            assert_eq!(so["spec"]["scaleTargetRef"]["name"], b.id.as_str(), "{what}");
            let query = so["spec"]["triggers"][0]["metadata"]["query"].as_str().unwrap();
            assert!(query.contains(&format!("model_id=\"{}\"", b.id)), "{what}: {query}");
            urls.insert(b.id.clone(), Value::from(format!("http://{}:{}", b.id, b.port)));
        }
        // The router reaches each backend through its Service, and embeds with the fetched MiniLM.
        let router_cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str().unwrap().starts_with("polyllm-router"))
            .expect("the router's ConfigMap");
        let settings: toml::Table = router_cm["data"]["router.toml"].as_str().unwrap().parse().unwrap();
        let backends: Value = serde_json::from_str(settings["backends"]["backends"].as_str().unwrap()).unwrap();
        assert_eq!(backends, Value::Object(urls), "{overlay}: router.toml's backends");
        let minilm = polyllm_fetch::artifacts().iter().find(|a| a.id.as_str() == "minilm").unwrap();
        assert_eq!(settings["routing"]["embedder_dir"].as_str(), Some(format!("/models/{}", minilm.name).as_str()));
        let router = find(&docs, "Deployment", "router");
        let rc = &router["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(rc["image"], compose["router"]["image"], "{overlay}: router image");
        assert_eq!(env(rc)["ROUTER_CONFIG"], "/etc/polyllm/router.toml");
        assert_eq!(find(&docs, "Service", "router")["spec"]["ports"][0]["port"], 8080);
        assert_eq!(find(&docs, "HorizontalPodAutoscaler", "router")["spec"]["metrics"][0]["resource"]["name"], "cpu");
        // Only the router reaches the model services.
        let np = find(&docs, "NetworkPolicy", "models-from-router");
        assert_eq!(np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "model");
        assert_eq!(
            np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "router"
        );
        // The dashboard is Grafana's, for its sidecar.
        let dash = find(&docs, "ConfigMap", "polyllm-dashboard");
        assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
        let ours = std::fs::read_to_string(repo().join("grafana/dashboards/polyllm.json")).unwrap();
        assert_eq!(dash["data"]["polyllm.json"].as_str(), Some(ours.as_str()));
        let sm = find(&docs, "ServiceMonitor", "polyllm");
        let scraped: BTreeSet<&str> = sm["spec"]["selector"]["matchExpressions"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(scraped, BTreeSet::from(["model", "router"]));
    }
}

/// Metric names in PromQL text: identifiers followed by `{`.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = query.as_bytes();
    for (i, _) in query.match_indices('{') {
        let start = query[..i].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
        if start < i && b[start].is_ascii_alphabetic() {
            out.insert(query[start..i].to_string());
        }
    }
    out
}

#[test]
fn the_autoscalers_read_metrics_a_live_model_service_exports() {
    let (_, docs) = render("cpu");
    let mut wanted = BTreeSet::new();
    for so in docs.iter().filter(|d| d["kind"] == "ScaledObject") {
        wanted.extend(metric_names(so["spec"]["triggers"][0]["metadata"]["query"].as_str().unwrap()));
    }
    let adapter = std::fs::read_to_string(repo().join("deploy/k8s/extras/prometheus-adapter-rules.yaml")).unwrap();
    let adapter_metrics = metric_names(&adapter.replace("<<.LabelMatchers>>", ""));
    assert!(!adapter_metrics.is_empty());
    wanted.extend(adapter_metrics);
    assert_eq!(wanted, BTreeSet::from(["model_in_flight".to_string(), "model_queue_depth".to_string()]));

    let port = free_port();
    let _m1 = Proc::spawn(
        "m1",
        Command::new(bin("inference")).arg("--model").arg(gemma()).args([
            "--model-id",
            "m1",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--threads",
            "1",
        ]),
    );
    let metrics =
        wait_for(&format!("http://127.0.0.1:{port}/metrics"), Duration::from_secs(120), "m1's /metrics", |s, _| {
            s == 200
        });
    for name in &wanted {
        let series = format!("{name}{{model_id=\"m1\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&series)), "{series} is not in m1's /metrics:\n{metrics}");
    }
}
