//! Scoring answers: a quality in [0, 1] per prompt and model, and the scorer that produced it.
//!
//! [`score`] dispatches on the record's [`Checker`]: [`numeric`], [`exact`], [`python_tests`],
//! [`humaneval`] and [`reference`] (embedding similarity) each own one scorer; [`extract`] owns
//! pulling the answer (number, short string, code) out of a model's reply, and [`python`] owns
//! running untrusted code in a sandboxed `python3` subprocess.

pub mod exact;
pub mod extract;
pub mod humaneval;
pub mod numeric;
pub mod python;
pub mod python_tests;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

use crate::dataset::{Checker, HumanEval, PromptRecord};

/// The quality of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// In [0, 1]; 1 is a fully correct answer.
    pub quality: f64,
    /// `"numeric"`, `"exact"`, `"python_tests"`, `"humaneval"` or `"embedding_similarity"`.
    pub scorer: &'static str,
    /// A short human-readable explanation (what was extracted, which tests failed, ...).
    pub detail: String,
}

/// Cosine similarity of (answer, reference) embeddings.
pub type SimilarityFn<'a> = &'a dyn Fn(&str, &str) -> anyhow::Result<f64>;

/// Everything a scorer needs besides the record and the answer.
pub struct ScoreContext<'a> {
    /// HumanEval problems (prompt, tests, entry point), for `humaneval` checkers.
    pub humaneval: &'a HumanEval,
    /// The Python interpreter that runs code (an absolute path is best: the sandbox clears `PATH`).
    pub python: PathBuf,
    /// Wall-clock limit for one code run; CPU time is limited to this (rounded up) plus one second.
    pub timeout: Duration,
    /// Embedding similarity for `reference` checkers; without it those are an error.
    pub similarity: Option<SimilarityFn<'a>>,
}

/// Default wall-clock limit of a code run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl<'a> ScoreContext<'a> {
    /// A context using the `python3` on `PATH` (resolved to its real executable), the default
    /// timeout and no similarity function.
    pub fn new(humaneval: &'a HumanEval) -> anyhow::Result<Self> {
        Ok(Self { humaneval, python: python::resolve_python("python3")?, timeout: DEFAULT_TIMEOUT, similarity: None })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_similarity(mut self, similarity: SimilarityFn<'a>) -> Self {
        self.similarity = Some(similarity);
        self
    }
}

/// Score `answer` to `record` with the record's checker.
///
/// Wrong, empty or unparsable answers are a [`Score`] with quality 0, not an error; errors are
/// reserved for the scorer being unable to judge (no similarity function for a reference checker,
/// an unknown HumanEval id, python3 failing to start).
pub fn score(record: &PromptRecord, answer: &str, ctx: &ScoreContext) -> anyhow::Result<Score> {
    match &record.checker {
        Checker::Numeric { answer: expected, tolerance } => numeric::score(answer, expected, *tolerance),
        Checker::Exact { answer: expected, normalize } => Ok(exact::score(answer, expected, *normalize)),
        Checker::PythonTests { entry_point, tests } => python_tests::score(answer, entry_point, tests, ctx),
        Checker::Humaneval { task_id } => humaneval::score(answer, task_id, ctx),
        Checker::Reference { reference } => reference::score(answer, reference, ctx),
    }
}
