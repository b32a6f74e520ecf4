//! Hand-made text features of a prompt: sizes, code and math cues, question marks, language cues
//! and task verbs. Pure functions of the text (and its token count), no model involved.
//!
//! This module owns [`TEXT_FEATURE_NAMES`] and [`text_features`]; the router and the trainer both
//! call them, so any change here changes every trained model's columns.
//!
//! Matching rules: language cues and task verbs are case-insensitive whole-word matches (the
//! characters around a match must not be letters, digits or `_`), giving 0.0 or 1.0. Ratios are
//! over Unicode scalar values (`chars`) and are 0.0 for the empty prompt.

/// Names of [`text_features`]' values, in order.
pub const TEXT_FEATURE_NAMES: &[&str] = &[
    "tokens",
    "chars",
    "words",
    "lines",
    "has_code",
    "code_fences",
    "digit_ratio",
    "math_symbol_ratio",
    "question_marks",
    "mentions_python",
    "mentions_rust",
    "mentions_javascript",
    "mentions_sql",
    "mentions_cpp",
    "mentions_java",
    "mentions_shell",
    "verb_write",
    "verb_explain",
    "verb_fix",
    "verb_prove",
    "verb_calculate",
    "verb_sort",
    "verb_summarize",
    "verb_translate",
    "verb_list",
    "verb_compare",
];

/// Language cues, in the order of the `mentions_*` names: any of the words flags the language.
const LANGUAGE_CUES: &[&[&str]] = &[
    &["python", "python3", "py", "pandas", "numpy", "django", "pytorch"],
    &["rust", "rustc", "cargo", "tokio"],
    &["javascript", "js", "typescript", "node.js", "nodejs", "react", "npm"],
    &["sql", "mysql", "postgres", "postgresql", "sqlite", "t-sql"],
    &["c++", "cpp"],
    &["java", "jvm", "maven", "gradle"],
    &["bash", "shell", "zsh", "powershell", "sh"],
];

/// Task verbs, in the order of the `verb_*` names: any of the words (or phrases) sets the flag.
/// `verb_calculate` also fires on "what is"/"what's" followed by a number (see [`what_is_number`]).
const VERB_CUES: &[&[&str]] = &[
    &["write", "writes", "writing", "wrote", "written", "implement", "create", "generate"],
    &["explain", "explains", "explaining", "explanation", "describe", "why does", "how does"],
    &["fix", "fixes", "fixing", "fixed", "debug", "debugging", "bug", "error"],
    &["prove", "proves", "proving", "proof", "show that"],
    &[
        "calculate",
        "calculates",
        "calculating",
        "calculation",
        "compute",
        "computes",
        "computing",
        "solve",
        "solves",
        "solving",
        "evaluate",
    ],
    &["sort", "sorts", "sorting", "sorted"],
    &["summarize", "summarise", "summarizes", "summarizing", "summary", "tl;dr", "tldr"],
    &["translate", "translates", "translating", "translation"],
    &["list", "lists", "listing", "enumerate"],
    &["compare", "compares", "comparing", "comparison", "versus", "vs"],
];

/// Code keywords that mark a line as code when it starts with one (after indentation).
/// Case-sensitive on purpose: "Let me know" or "Return the list" are prose.
const CODE_LINE_STARTS: &[&str] = &[
    "def ",
    "fn ",
    "pub fn ",
    "async fn ",
    "impl ",
    "use ",
    "import ",
    "from ",
    "class ",
    "return ",
    "#include",
    "function ",
    "const ",
    "let ",
    "var ",
    "for (",
    "if (",
    "while (",
    "} else",
    "public ",
    "private ",
    "struct ",
    "SELECT ",
    "INSERT ",
    "CREATE TABLE",
    "package ",
    "func ",
    "#!/",
    "print(",
    "console.log",
    "println!",
];

const MATH_SYMBOLS: &[char] = &['+', '-', '*', '/', '=', '^', '<', '>', '%'];

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `needle` (lowercase) occurs in `hay` (already lowercased) as a whole word.
fn contains_word(hay: &str, needle: &str) -> bool {
    let mut start = 0;
    while let Some(pos) = hay[start..].find(needle) {
        let at = start + pos;
        let end = at + needle.len();
        let before_ok = hay[..at].chars().next_back().is_none_or(|c| !is_word_char(c));
        let after_ok = hay[end..].chars().next().is_none_or(|c| !is_word_char(c));
        if before_ok && after_ok {
            return true;
        }
        // Step past the first char of this match (char boundary safe).
        start = at + hay[at..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// "what is 12 …", "what's 3+4", "what is -7 …" (lowercased hay).
fn what_is_number(hay: &str) -> bool {
    ["what is", "what's"].iter().any(|phrase| {
        let mut start = 0;
        while let Some(pos) = hay[start..].find(phrase) {
            let at = start + pos;
            let end = at + phrase.len();
            let before_ok = hay[..at].chars().next_back().is_none_or(|c| !is_word_char(c));
            let rest = hay[end..].trim_start();
            let rest = rest.strip_prefix('-').unwrap_or(rest);
            if before_ok && rest.starts_with(|c: char| c.is_ascii_digit()) {
                return true;
            }
            start = end;
        }
        false
    })
}

fn flag(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Code heuristic: a fence, a line starting with a code keyword, or a dense `{` `}` `;` mix
/// (at least 3 of them and at least 2% of the characters).
fn looks_like_code(prompt: &str, chars: usize, code_fences: usize) -> bool {
    if code_fences > 0 {
        return true;
    }
    if prompt.lines().any(|line| {
        let t = line.trim_start();
        CODE_LINE_STARTS.iter().any(|k| t.starts_with(k))
    }) {
        return true;
    }
    let braces = prompt.chars().filter(|c| matches!(c, '{' | '}' | ';')).count();
    braces >= 3 && (braces as f32) >= 0.02 * chars as f32
}

/// The text features of `prompt`; `tokens` is its WordPiece token count from the embedder.
/// Returns exactly `TEXT_FEATURE_NAMES.len()` values in that order.
pub fn text_features(prompt: &str, tokens: usize) -> Vec<f32> {
    let chars = prompt.chars().count();
    let words = prompt.split_whitespace().count();
    let lines = prompt.lines().count();
    let code_fences = prompt.matches("```").count();
    let digits = prompt.chars().filter(|c| c.is_ascii_digit()).count();
    let math = prompt.chars().filter(|c| MATH_SYMBOLS.contains(c)).count();
    let question_marks = prompt.chars().filter(|&c| c == '?').count();
    let ratio = |n: usize| {
        if chars == 0 {
            0.0
        } else {
            n as f32 / chars as f32
        }
    };

    let lower = prompt.to_lowercase();
    let mut out = Vec::with_capacity(TEXT_FEATURE_NAMES.len());
    out.push(tokens as f32);
    out.push(chars as f32);
    out.push(words as f32);
    out.push(lines as f32);
    out.push(flag(looks_like_code(prompt, chars, code_fences)));
    out.push(code_fences as f32);
    out.push(ratio(digits));
    out.push(ratio(math));
    out.push(question_marks as f32);
    for cues in LANGUAGE_CUES {
        out.push(flag(cues.iter().any(|w| contains_word(&lower, w))));
    }
    for (i, cues) in VERB_CUES.iter().enumerate() {
        let mut hit = cues.iter().any(|w| contains_word(&lower, w));
        if i == 4 {
            hit = hit || what_is_number(&lower);
        }
        out.push(flag(hit));
    }
    debug_assert_eq!(out.len(), TEXT_FEATURE_NAMES.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(values: &[f32], name: &str) -> f32 {
        let i = TEXT_FEATURE_NAMES.iter().position(|n| *n == name).expect("known feature name");
        values[i]
    }

    fn on_flags(values: &[f32]) -> Vec<&'static str> {
        TEXT_FEATURE_NAMES
            .iter()
            .zip(values)
            .filter(|(n, v)| (n.starts_with("mentions_") || n.starts_with("verb_")) && **v == 1.0)
            .map(|(n, _)| *n)
            .collect()
    }

    #[test]
    fn names_are_unique_and_match_values() {
        let mut names = TEXT_FEATURE_NAMES.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TEXT_FEATURE_NAMES.len());
        assert_eq!(text_features("", 2).len(), TEXT_FEATURE_NAMES.len());
    }

    #[test]
    fn empty_prompt() {
        let v = text_features("", 2);
        let mut expected = vec![0.0; TEXT_FEATURE_NAMES.len()];
        expected[0] = 2.0;
        assert_eq!(v, expected);
    }

    #[test]
    fn math_question() {
        // 17 chars: "What is 12*(3+4)?" ; digits 1,2,3,4 = 4 ; math * + = 2 ; one '?'
        let p = "What is 12*(3+4)?";
        let v = text_features(p, 11);
        assert_eq!(get(&v, "tokens"), 11.0);
        assert_eq!(get(&v, "chars"), 17.0);
        assert_eq!(get(&v, "words"), 3.0);
        assert_eq!(get(&v, "lines"), 1.0);
        assert_eq!(get(&v, "has_code"), 0.0);
        assert_eq!(get(&v, "code_fences"), 0.0);
        assert_eq!(get(&v, "digit_ratio"), 4.0 / 17.0);
        assert_eq!(get(&v, "math_symbol_ratio"), 2.0 / 17.0);
        assert_eq!(get(&v, "question_marks"), 1.0);
        assert_eq!(on_flags(&v), vec!["verb_calculate"]);
    }

    #[test]
    fn rust_code_fix() {
        let p = "Fix this Rust code:\n```rust\nfn main() { let x = 1; }\n```\nWhy?";
        let v = text_features(p, 30);
        assert_eq!(get(&v, "chars"), p.chars().count() as f32);
        assert_eq!(get(&v, "chars"), 61.0);
        assert_eq!(get(&v, "words"), 15.0);
        assert_eq!(get(&v, "lines"), 5.0);
        assert_eq!(get(&v, "has_code"), 1.0);
        assert_eq!(get(&v, "code_fences"), 2.0);
        assert_eq!(get(&v, "digit_ratio"), 1.0 / 61.0);
        assert_eq!(get(&v, "math_symbol_ratio"), 1.0 / 61.0);
        assert_eq!(get(&v, "question_marks"), 1.0);
        assert_eq!(on_flags(&v), vec!["mentions_rust", "verb_fix"]);
    }

    #[test]
    fn word_boundaries_and_case() {
        // "JavaScript" is not "java"; "listen" is not "list"; "Python" matches case-insensitively;
        // "prefix" is not "fix"; "sorted" is a sort form.
        let p = "Write a PYTHON function that returns the sorted keys; listen to JavaScript, prefix.";
        let v = text_features(p, 20);
        assert_eq!(on_flags(&v), vec!["mentions_python", "mentions_javascript", "verb_write", "verb_sort"]);
        assert_eq!(get(&v, "has_code"), 0.0);
    }

    #[test]
    fn prose_tasks() {
        let p = "Summarize and compare these two essays, then translate the summary into French. \
                 Also list three points and explain them. Prove that sqrt(2) is irrational.";
        let v = text_features(p, 40);
        assert_eq!(
            on_flags(&v),
            vec!["verb_explain", "verb_prove", "verb_summarize", "verb_translate", "verb_list", "verb_compare"]
        );
        assert_eq!(get(&v, "digit_ratio"), 1.0 / p.chars().count() as f32);
    }

    #[test]
    fn code_without_fences_and_unicode() {
        let p = "def f(x):\n    return x * 2";
        let v = text_features(p, 12);
        assert_eq!(get(&v, "has_code"), 1.0);
        assert_eq!(get(&v, "lines"), 2.0);
        let u = "Ça va? Élève naïf — où est la bibliothèque?";
        let w = text_features(u, 20);
        assert_eq!(get(&w, "chars"), u.chars().count() as f32);
        assert_eq!(get(&w, "question_marks"), 2.0);
        assert_eq!(get(&w, "has_code"), 0.0);
        assert!(on_flags(&w).is_empty());
        // Brace-heavy text without keywords still counts as code.
        assert_eq!(get(&text_features("{a:1};{b:2};{c:3}", 9), "has_code"), 1.0);
    }

    #[test]
    fn deterministic() {
        let p = "Compute 2^10 in SQL, then sort the rows.";
        assert_eq!(text_features(p, 13), text_features(p, 13));
        assert_eq!(on_flags(&text_features(p, 13)), vec!["mentions_sql", "verb_calculate", "verb_sort"]);
    }
}
