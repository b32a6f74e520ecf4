//! The `python_tests` scorer (our own code tasks): the reply's code followed by the task's asserts,
//! run in the sandbox ([`super::python`]).
//!
//! Each assert line runs separately (`exec` in the program's globals), so quality is the fraction
//! of asserts that pass. Code that fails to compile or raises at import, a timeout, or a program
//! that exits before the harness reports, is quality 0.

use super::exact::truncate;
use super::extract::{defines_function, extract_code};
use super::python::{nonce, run_sandboxed};
use super::{Score, ScoreContext};

pub const SCORER: &str = "python_tests";

/// The test lines of a `tests` field: every non-empty line that is not a comment.
pub fn test_lines(tests: &str) -> Vec<String> {
    tests
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(String::from)
        .collect()
}

/// The program run for a reply: its code, then a harness that runs each test line separately
/// and prints `<marker> <passed> <total> <indices of failed tests>`.
pub fn program(code: &str, tests: &[String], marker: &str) -> String {
    let tests_literal = serde_json::to_string(tests).unwrap_or_else(|_| "[]".into());
    let mut p = String::with_capacity(code.len() + HARNESS.len() + tests_literal.len() + 64);
    p.push_str(code);
    p.push_str("\n\n");
    p.push_str(&HARNESS.replace("@TESTS@", &tests_literal).replace("@MARKER@", &format!("{marker:?}")));
    p
}

const HARNESS: &str = r#"__polyllm_tests = @TESTS@
__polyllm_failed = []
for __polyllm_i, __polyllm_t in enumerate(__polyllm_tests):
    try:
        exec(__polyllm_t, globals())
    except BaseException:
        __polyllm_failed.append(__polyllm_i)
print(@MARKER@, len(__polyllm_tests) - len(__polyllm_failed), len(__polyllm_tests), *__polyllm_failed, flush=True)
"#;

/// Score a reply to a `python_tests` task.
pub fn score(answer: &str, entry_point: &str, tests: &str, ctx: &ScoreContext) -> anyhow::Result<Score> {
    let tests = test_lines(tests);
    if tests.is_empty() {
        anyhow::bail!("python_tests checker for {entry_point:?} has no tests");
    }
    let code = extract_code(answer);
    if !defines_function(&code, entry_point) {
        return Ok(Score { quality: 0.0, scorer: SCORER, detail: format!("no `def {entry_point}` in the answer") });
    }
    let marker = nonce();
    let run = run_sandboxed(&ctx.python, &program(&code, &tests, &marker), ctx.timeout)?;
    if run.timed_out {
        return Ok(Score {
            quality: 0.0,
            scorer: SCORER,
            detail: format!("timed out after {:.1}s", run.elapsed.as_secs_f64()),
        });
    }
    let report = run.stdout.lines().rev().find_map(|l| l.strip_prefix(marker.as_str()).map(str::to_owned));
    let Some(report) = report else {
        return Ok(Score {
            quality: 0.0,
            scorer: SCORER,
            detail: format!("did not run to the end (exit {:?}): {}", run.exit_code, truncate(&run.error_line(), 160)),
        });
    };
    let nums: Vec<usize> = report.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    let (passed, total) = match nums.as_slice() {
        [p, t, ..] if *t > 0 && p <= t => (*p, *t),
        _ => {
            return Ok(Score { quality: 0.0, scorer: SCORER, detail: format!("unreadable harness report {report:?}") })
        }
    };
    let failed: Vec<String> = nums[2..].iter().map(|i| (i + 1).to_string()).collect();
    let detail = if failed.is_empty() {
        format!("{passed}/{total} asserts passed")
    } else {
        format!("{passed}/{total} asserts passed; failed: {}", failed.join(", "))
    };
    Ok(Score { quality: passed as f64 / total as f64, scorer: SCORER, detail })
}
