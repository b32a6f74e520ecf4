//! The semantic cache: a prompt close enough in meaning to one answered before gets that answer,
//! without running a model. Opt-in (`--semantic-cache`, or `"semantic_cache": true` per request),
//! for deterministic requests only, like the exact cache.
//!
//! An entry is the MiniLM embedding of an answered prompt, its salient markers (see [`Markers`])
//! and the exact-cache key its answer is stored under; entries live in buckets keyed by everything
//! the exact key covers except the prompt (tenant, endpoint, sampling fields, preference, forced
//! model), so a hit always has the same parameters and the same tenant. A new prompt hits the
//! entry of its bucket with the highest cosine similarity when that similarity is at least the
//! threshold and the two prompts carry the same markers; the answer is then read from the exact
//! cache (Redis or in process) under the stored key, so it expires with it.
//!
//! The index itself is in process and bounded: at most [`PER_BUCKET`] entries per bucket (the
//! oldest go first) and `--semantic-max-entries` in all (least recently used buckets go first).
//! Redis 7 as Debian ships it has no vector search, so each router replica keeps its own index;
//! the answers it points to are shared through Redis like every cached answer.
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The similarity at or above which a stored prompt may answer (with equal [`Markers`]), chosen
/// on `datasets/semantic_pairs.jsonl` (`router/tests/semantic_pairs.rs`, benchmarks/RESULTS.md).
pub const DEFAULT_THRESHOLD: f32 = 0.85;

/// Most entries one bucket keeps; a search scans them all (384 multiply-adds each).
pub const PER_BUCKET: usize = 256;

/// What must be equal for two prompts to share an answer, whatever their similarity: numbers,
/// operators, code identifiers and quoted text, names, negations, and the words that flip a
/// request's direction (ascending/descending, min/max ...). Measured on
/// `datasets/semantic_pairs.jsonl`: without these, near misses such as "17 * 23" / "17 * 24" or
/// "sort ascending" / "sort descending" are closer than many true paraphrases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    /// Numbers (digits or number words) in the order they appear ("17 - 23" is not "23 - 17").
    numbers: Vec<String>,
    /// The critical words in order ("fahrenheit to celsius" is not "celsius to fahrenheit").
    words: Vec<String>,
    /// Operators, quoted text, identifiers and names, as a set.
    other: BTreeSet<String>,
    /// The remaining content words (not compared for equality; see [`accepts`]).
    content: BTreeSet<String>,
}

/// Number words, read as their digits.
#[rustfmt::skip]
const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"), ("five", "5"), ("six", "6"), ("seven",
    "7"), ("eight", "8"), ("nine", "9"), ("ten", "10"), ("eleven", "11"), ("twelve", "12"), ("twenty", "20"),
    ("hundred", "100"), ("thousand", "1000"), ("million", "1000000"), ("first", "1st"), ("second", "2nd"), ("third",
    "3rd"), ("fourth", "4th"), ("fifth", "5th"), ("half", "1/2"), ("twice", "x2"), ("double", "x2"), ("triple",
    "x3"),
];

/// Words that carry no meaning of their own for this comparison (function words and the verbs
/// of asking).
#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "do", "does", "did", "can", "could", "would",
    "will", "shall", "should", "may", "might", "must", "i", "me", "my", "you", "your", "we", "us", "it", "its",
    "this", "that", "these", "those", "of", "in", "on", "at", "to", "for", "from", "by", "with", "about", "into",
    "and", "or", "but", "so", "if", "then", "than", "as", "what", "whats", "what's", "which", "who", "whom",
    "whose", "how", "why", "when", "where", "please", "tell", "give", "show", "explain", "describe", "define",
    "name", "list", "find", "get", "let", "make", "compose", "compute", "calculate", "help", "want", "need", "like",
    "know", "there", "here", "have", "has", "had", "s", "it's", "briefly", "brief", "quick", "quickly", "simple",
    "simply", "just", "also", "some", "way", "ways", "example", "called", "named",
];

/// Words whose presence changes what is asked, compared as a set. Negations, directions and
/// extremes, comparisons, quantities and languages/formats that change the expected answer.
#[rustfmt::skip]
const CRITICAL_WORDS: &[&str] = &[
    "not", "no", "never", "without", "nor", "none", "cannot", "isn't", "doesn't", "don't", "won't", "can't",
    "aren't", "wasn't", "shouldn't", "except", "ascending", "descending", "increasing", "decreasing", "reverse",
    "reversed", "min", "max", "minimum", "maximum", "smallest", "largest", "biggest", "lowest", "highest", "least",
    "most", "first", "last", "before", "after", "above", "below", "more", "less", "fewer", "greater", "smaller",
    "larger", "longer", "shorter", "older", "younger", "earlier", "later", "even", "odd", "positive", "negative",
    "prime", "true", "false", "yes", "all", "any", "every", "each", "some", "only", "both", "either", "neither",
    "python", "javascript", "typescript", "rust", "java", "c", "c++", "go", "ruby", "sql", "bash", "json", "yaml",
    "csv", "html", "celsius", "fahrenheit", "kelvin", "km", "miles", "meters", "feet", "kg", "pounds", "seconds",
    "minutes", "hours", "days", "weeks", "months", "years", "upper", "lower", "uppercase", "lowercase", "left",
    "right", "add", "subtract", "multiply", "divide", "sum", "difference", "product", "quotient", "plus", "minus",
    "times", "divided", "square", "cube", "root", "encode", "decode", "encrypt", "decrypt", "compress",
    "decompress", "open", "close", "start", "stop", "enable", "disable", "insert", "delete", "remove", "append",
    "prepend", "sort", "shuffle", "unique", "duplicate", "duplicates", "read", "write", "load", "save", "import",
    "export", "upload", "download", "send", "receive", "create", "drop",
];

impl Markers {
    /// The markers of `prompt`.
    pub fn of(prompt: &str) -> Markers {
        let mut other = BTreeSet::new();
        let mut numbers = Vec::new();
        let mut words = Vec::new();
        let mut content = BTreeSet::new();
        // Quoted or back-ticked text, verbatim.
        for q in ['"', '`'] {
            let parts: Vec<&str> = prompt.split(q).collect();
            for inner in parts.iter().skip(1).step_by(2).take(parts.len().saturating_sub(1) / 2) {
                other.insert(format!("q:{inner}"));
            }
        }
        // Operators (not a hyphen inside a word).
        let chars: Vec<char> = prompt.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            let between_letters =
                i > 0 && i + 1 < chars.len() && chars[i - 1].is_alphabetic() && chars[i + 1].is_alphabetic();
            if "+-*/%^=<>".contains(c) && !between_letters {
                other.insert(format!("op:{c}"));
            }
        }
        let mut sentence_start = true;
        for raw in prompt.split(|c: char| c.is_whitespace() || ",;:()[]{}?\"`".contains(c)) {
            if raw.is_empty() {
                continue;
            }
            let ends = raw.ends_with(['.', '!']);
            let word = raw.trim_matches(|c: char| ".!'".contains(c));
            if word.is_empty() {
                sentence_start = ends || sentence_start;
                continue;
            }
            let lower = word.to_lowercase();
            if word.chars().any(|c| c.is_ascii_digit()) {
                // Numbers (and words with digits: v2, x86_64, 3rd).
                numbers.push(lower.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string());
            } else if let Some((_, n)) = NUMBER_WORDS.iter().find(|(w, _)| *w == lower) {
                numbers.push(n.to_string());
            } else if CRITICAL_WORDS.contains(&lower.as_str()) || lower.ends_with("n't") {
                words.push(lower);
            } else if word.contains('_')
                || word.contains("::")
                || word.contains('.')
                || word.chars().skip(1).any(|c| c.is_uppercase()) && word.chars().any(|c| c.is_lowercase())
            {
                // Identifiers: snake_case, camelCase, paths, module.member.
                other.insert(format!("id:{word}"));
            } else if !sentence_start && word.chars().next().is_some_and(|c| c.is_uppercase()) && word.len() > 1 {
                // Names (capitalized words not at the start of a sentence).
                other.insert(format!("name:{lower}"));
            } else if !STOP_WORDS.contains(&lower.as_str()) && lower.len() > 1 {
                content.insert(stem(&lower));
            }
            sentence_start = ends;
        }
        Markers { numbers, words, other, content }
    }
}

/// A light stem, so plural and verb forms compare equal ("dictionaries"/"dictionary").
fn stem(w: &str) -> String {
    for (suffix, repl) in [("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ed", "")] {
        if w.len() > suffix.len() + 3 {
            if let Some(base) = w.strip_suffix(suffix) {
                return format!("{base}{repl}");
            }
        }
    }
    w.to_string()
}

impl Markers {
    /// Whether two prompts may share an answer as far as their markers go: the same numbers and
    /// critical words in the same order, the same operators, quotes, identifiers and names, and
    /// not one content word swapped for another (the shape of a near miss such as "read a file" /
    /// "write a file"; a paraphrase rewords more, or only drops or adds words).
    pub fn compatible(&self, other: &Markers) -> bool {
        if self.numbers != other.numbers || self.words != other.words || self.other != other.other {
            return false;
        }
        let only_here = self.content.difference(&other.content).count();
        let only_there = other.content.difference(&self.content).count();
        !(only_here == 1 && only_there == 1)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Whether a stored prompt may answer a new one: similar enough, and the same markers.
pub fn accepts(similarity: f32, threshold: f32, new: &Markers, stored: &Markers) -> bool {
    similarity >= threshold && new.compatible(stored)
}

/// The bucket of a request: every exact-cache input but the prompt. `upstream_body` is the JSON
/// sent to the backend; its prompt (or messages) is left out here.
pub fn bucket_key(
    path: &str,
    upstream_body: &[u8],
    preference: &str,
    model: Option<&str>,
    tenant: Option<&str>,
) -> String {
    let mut body: serde_json::Value = serde_json::from_slice(upstream_body).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.remove("prompt");
        o.remove("messages");
    }
    let mut h = Sha256::new();
    h.update(b"polyllm-semantic-v1\0");
    h.update(tenant.unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(path.as_bytes());
    h.update(b"\0");
    h.update(body.to_string().as_bytes());
    h.update(b"\0");
    h.update(preference.as_bytes());
    h.update(b"\0");
    h.update(model.unwrap_or("auto").as_bytes());
    hex::encode(h.finalize())
}

/// A request's place in the index, computed at lookup and used to add its answer once cached.
#[derive(Debug, Clone)]
pub struct Pending {
    pub bucket: String,
    pub vector: Arc<Vec<f32>>,
    pub markers: Markers,
}

struct Entry {
    vector: Arc<Vec<f32>>,
    markers: Markers,
    key: String,
    added: Instant,
}

/// A hit: the exact-cache key of the stored answer, and how similar its prompt is.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub key: String,
    pub similarity: f32,
}

/// The nearest stored prompt, whether or not it was accepted (for the metrics).
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Hit(Found),
    /// The nearest prompt was similar enough but its markers differ (a near miss kept out).
    Guarded {
        similarity: f32,
    },
    Miss {
        best: Option<f32>,
    },
}

/// The in-process index: buckets of entries, bounded, entries older than the cache TTL ignored.
pub struct SemanticIndex {
    buckets: Cache<String, Arc<Mutex<Vec<Entry>>>>,
    threshold: f32,
    ttl: Duration,
}

impl SemanticIndex {
    /// At most `max_entries` entries in all (buckets weigh their entry count).
    pub fn new(threshold: f32, ttl: Duration, max_entries: u64) -> Self {
        let buckets = Cache::builder()
            .max_capacity(max_entries.max(1))
            .weigher(|_k: &String, v: &Arc<Mutex<Vec<Entry>>>| v.lock().map_or(1, |e| e.len().max(1) as u32))
            .time_to_idle(ttl)
            .build();
        SemanticIndex { buckets, threshold, ttl }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The best entry of `bucket` for a prompt with `vector` and `markers`.
    pub fn lookup(&self, bucket: &str, vector: &[f32], markers: &Markers) -> Lookup {
        let Some(b) = self.buckets.get(bucket) else { return Lookup::Miss { best: None } };
        let entries = b.lock().expect("semantic bucket lock");
        let fresh = entries.iter().filter(|e| e.added.elapsed() < self.ttl);
        let best = fresh.map(|e| (cosine(vector, &e.vector), e)).max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            None => Lookup::Miss { best: None },
            Some((s, e)) if accepts(s, self.threshold, markers, &e.markers) => {
                Lookup::Hit(Found { key: e.key.clone(), similarity: s })
            }
            Some((s, _)) if s >= self.threshold => Lookup::Guarded { similarity: s },
            Some((s, _)) => Lookup::Miss { best: Some(s) },
        }
    }

    /// Records that the answer to a prompt with `vector` and `markers` is cached under `key`.
    pub fn insert(&self, bucket: &str, vector: Arc<Vec<f32>>, markers: Markers, key: String) {
        let b = self.buckets.get_with(bucket.to_string(), || Arc::new(Mutex::new(Vec::new())));
        {
            let mut entries = b.lock().expect("semantic bucket lock");
            entries.retain(|e| e.key != key && e.added.elapsed() < self.ttl);
            if entries.len() >= PER_BUCKET {
                entries.remove(0);
            }
            entries.push(Entry { vector, markers, key, added: Instant::now() });
        }
        // Re-insert so the bucket's weight (its entry count) is counted against the bound.
        self.buckets.insert(bucket.to_string(), b);
    }

    /// Entries held in all buckets.
    pub fn len(&self) -> usize {
        self.buckets.run_pending_tasks();
        self.buckets.iter().map(|(_, b)| b.lock().map_or(0, |e| e.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn markers_catch_what_similarity_misses() {
        let ok = |a: &str, b: &str| Markers::of(a).compatible(&Markers::of(b));
        assert!(!ok("What is 17 * 23?", "What is 17 * 24?"));
        assert!(!ok("What is 17 * 23?", "What is 17 + 23?"));
        assert!(!ok("What is 17 - 23?", "What is 23 - 17?"));
        assert!(!ok("Sort the list in ascending order", "Sort the list in descending order"));
        assert!(!ok("Convert 100 fahrenheit to celsius.", "Convert 100 celsius to fahrenheit."));
        assert!(!ok("Write a function parse_config in Python", "Write a function load_config in Python"));
        assert!(!ok("Is Paris the capital of France?", "Is Paris the capital of Spain?"));
        assert!(!ok("List the files that are hidden", "List the files that are not hidden"));
        assert!(!ok("Reverse a string in Python", "Reverse a string in JavaScript"));
        assert!(!ok("What are the three states of matter?", "What are the four states of matter?"));
        assert!(!ok("How do I read a file in Python?", "How do I write a file in Python?"));
        // Paraphrases keep their markers.
        assert!(ok("What is the capital of France?", "Tell me the capital city of France."));
        assert!(ok("What is 17 * 23?", "Compute 17 * 23 for me"));
        assert!(ok("How do I reverse a string in Python?", "Reverse a string in python, how?"));
        assert!(ok("How do I merge two dictionaries in Python?", "Merge two dictionary in python"));
    }

    #[test]
    fn buckets_keep_parameters_and_tenants_apart() {
        let b = |body: &str, tenant| bucket_key("/generate", body.as_bytes(), "auto", None, tenant);
        let base = b(r#"{"prompt":"a","temp":0}"#, None);
        assert_eq!(base, b(r#"{"prompt":"something else","temp":0}"#, None), "the prompt is not part of it");
        assert_ne!(base, b(r#"{"prompt":"a","temp":0,"max_tokens":5}"#, None));
        assert_ne!(base, b(r#"{"prompt":"a","temp":0}"#, Some("key:x")));
        assert_ne!(base, bucket_key("/generate", br#"{"prompt":"a","temp":0}"#, "gpu", None, None));
    }

    #[test]
    fn the_nearest_entry_with_equal_markers_hits() {
        let idx = SemanticIndex::new(0.9, Duration::from_secs(60), 1000);
        let a = Arc::new(unit(&[1.0, 0.0, 0.0]));
        idx.insert("b", a.clone(), Markers::of("x"), "k1".into());
        let near = unit(&[1.0, 0.1, 0.0]);
        match idx.lookup("b", &near, &Markers::of("x")) {
            Lookup::Hit(f) => assert!(f.key == "k1" && f.similarity > 0.99),
            other => panic!("{other:?}"),
        }
        assert!(matches!(idx.lookup("b", &near, &Markers::of("x 2")), Lookup::Guarded { .. }));
        assert!(matches!(idx.lookup("b", &unit(&[0.0, 1.0, 0.0]), &Markers::of("x")), Lookup::Miss { best: Some(_) }));
        assert!(matches!(idx.lookup("other", &near, &Markers::of("x")), Lookup::Miss { best: None }));
    }

    #[test]
    fn buckets_are_bounded() {
        let idx = SemanticIndex::new(0.9, Duration::from_secs(60), 1000);
        for i in 0..PER_BUCKET + 10 {
            idx.insert("b", Arc::new(unit(&[1.0, i as f32])), Markers::of("x"), format!("k{i}"));
        }
        assert_eq!(idx.len(), PER_BUCKET);
        let small = SemanticIndex::new(0.9, Duration::from_secs(60), 50);
        for i in 0..200 {
            small.insert(&format!("b{i}"), Arc::new(unit(&[1.0, 0.0])), Markers::of("x"), format!("k{i}"));
        }
        assert!(small.len() <= 50, "{} entries kept", small.len());
    }

    #[test]
    fn entries_expire_with_the_cache() {
        let idx = SemanticIndex::new(0.5, Duration::from_millis(30), 100);
        idx.insert("b", Arc::new(unit(&[1.0, 0.0])), Markers::of("x"), "k".into());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!matches!(idx.lookup("b", &unit(&[1.0, 0.0]), &Markers::of("x")), Lookup::Hit(_)));
    }
}
