//! The GGUF tokenizers against llama.cpp, on the real models: ids for every fixture string must
//! be identical. Fixtures: inference/tests/fixtures/tokenizer/{gemma3,qwen2,special}.json, made
//! by make_fixtures.py there. Needs the models in `models/` (run `cargo run -p inference --bin
//! fetch-models`): a missing model fails the tests, it does not skip them.
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::{GgufTokenizer, TokenStream};
use candle_core::quantized::gguf_file::Content;
use serde::Deserialize;

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Special {
    n_vocab: usize,
    bos: u32,
    eos: u32,
    add_bos: bool,
    eog: Vec<u32>,
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$MODELS_DIR` (relative to the repository root) or `<repo>/models`, as fetch-models uses.
fn models_dir() -> PathBuf {
    let root = manifest().join("..");
    match std::env::var_os("MODELS_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("models"),
    }
}

fn header(file: &str) -> Content {
    let path = models_dir().join(file);
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!("model {} is missing ({e}): run `cargo run -p polyllm-fetch --bin fetch-models` first", path.display())
    });
    Content::read(&mut f).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn load(file: &str) -> Arc<GgufTokenizer> {
    let ct = header(file);
    let start = Instant::now();
    let tok = GgufTokenizer::from_gguf(&ct).unwrap();
    eprintln!("{file}: tokenizer built in {:?}", start.elapsed());
    Arc::new(tok)
}

fn gemma() -> &'static Arc<GgufTokenizer> {
    static T: OnceLock<Arc<GgufTokenizer>> = OnceLock::new();
    T.get_or_init(|| load(GEMMA))
}

fn qwen() -> &'static Arc<GgufTokenizer> {
    static T: OnceLock<Arc<GgufTokenizer>> = OnceLock::new();
    T.get_or_init(|| load(QWEN))
}

/// `TOKENIZER_FIXTURES_DIR` points the id tests at other fixtures of the same format (e.g. a
/// larger randomized corpus made with llama.cpp); by default, the committed ones.
fn fixtures(name: &str) -> Vec<Case> {
    let dir = std::env::var_os("TOKENIZER_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("tests/fixtures/tokenizer"));
    let path = dir.join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn special(name: &str) -> Special {
    let path = manifest().join("tests/fixtures/tokenizer/special.json");
    let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(all[name].clone()).unwrap()
}

fn check_ids(tok: &GgufTokenizer, name: &str) {
    let cases = fixtures(name);
    assert!(cases.len() >= 220);
    let mut bad = Vec::new();
    for c in &cases {
        let got = tok.encode(&c.text, false).unwrap();
        if got != c.ids {
            bad.push(format!("{:?}\n  llama.cpp: {:?}\n  ours:      {:?}", c.text, c.ids, got));
        }
    }
    eprintln!("{name}: {}/{} strings match llama.cpp", cases.len() - bad.len(), cases.len());
    assert!(bad.is_empty(), "{name}: {} of {} differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

/// Texts whose Gemma decode is legitimately not the input: a literal "▁" (SentencePiece's space
/// marker) and literal "<0xNN>" texts merged into byte tokens decode as what they stand for,
/// and decode drops BOS (a literal "<bos>" in the text is parsed as BOS).
fn spm_lossy(text: &str) -> bool {
    text.contains('\u{2581}') || text.contains("<0x") || text.contains("<bos>")
}

fn check_round_trip(tok: &GgufTokenizer, name: &str, with_bos: bool) {
    let mut bad = Vec::new();
    let mut n = 0;
    for c in fixtures(name) {
        if name == "gemma3" && spm_lossy(&c.text) {
            continue;
        }
        n += 1;
        let ids = tok.encode(&c.text, with_bos).unwrap();
        if with_bos && tok.add_bos_default() {
            assert_eq!(ids.first(), tok.bos_id().as_ref(), "{:?}", c.text);
        }
        let back = tok.decode(&ids).unwrap();
        if back != c.text {
            bad.push(format!("{:?} -> {:?}", c.text, back));
        }
    }
    assert!(n >= 220);
    assert!(bad.is_empty(), "{name} round trip (bos={with_bos}):\n{}", bad.join("\n"));
}

fn check_stream(tok: &Arc<GgufTokenizer>, name: &str) {
    let mut extra: Vec<String> = fixtures(name).into_iter().map(|c| c.text).collect();
    extra.push("😀👨‍👩‍👧‍👦 中文字符 𠀀𠀁 ﬁ é e\u{301} 🇯🇵 🫠".repeat(3));
    for text in &extra {
        let ids = tok.encode(text, true).unwrap();
        let mut stream = TokenStream::new(tok.clone());
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id).unwrap() {
                assert!(!piece.is_empty());
                assert!(
                    !piece.contains('\u{FFFD}') || text.contains('\u{FFFD}'),
                    "{name}: partial char yielded for {text:?}"
                );
                out.push_str(&piece);
            }
        }
        out.extend(stream.finish().unwrap());
        assert_eq!(out, tok.decode(&ids).unwrap(), "{name}: stream vs decode for {text:?}");
    }
    // Arbitrary id sequences, including lone/invalid byte tokens, still concatenate to decode().
    let n = tok.vocab_size() as u64;
    let mut x = 0x9E3779B97F4A7C15u64;
    for _ in 0..200 {
        let ids: Vec<u32> = (0..24)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Bias towards low ids (Gemma's byte tokens are 238..494; Qwen's bytes are < 256).
                (if x.is_multiple_of(3) { x % 600 } else { x % n }) as u32
            })
            .collect();
        let mut stream = TokenStream::new(tok.clone());
        let mut out = String::new();
        for &id in &ids {
            out.extend(stream.push(id).unwrap());
        }
        out.extend(stream.finish().unwrap());
        assert_eq!(out, tok.decode(&ids).unwrap(), "{name}: stream vs decode for {ids:?}");
    }
}

#[test]
fn gemma3_ids_match_llama_cpp() {
    check_ids(gemma(), "gemma3");
}

#[test]
fn qwen2_ids_match_llama_cpp() {
    check_ids(qwen(), "qwen2");
}

#[test]
fn gemma3_round_trip() {
    check_round_trip(gemma(), "gemma3", false);
    check_round_trip(gemma(), "gemma3", true);
}

#[test]
fn qwen2_round_trip() {
    check_round_trip(qwen(), "qwen2", false);
    check_round_trip(qwen(), "qwen2", true);
}

#[test]
fn gemma3_stream_equals_decode() {
    check_stream(gemma(), "gemma3");
}

#[test]
fn qwen2_stream_equals_decode() {
    check_stream(qwen(), "qwen2");
}

#[test]
fn gemma3_special_tokens() {
    let tok = gemma();
    let sp = special("gemma3");
    let id = |s: &str| tok.inner().token_to_id(s).unwrap();
    assert_eq!(tok.vocab_size(), sp.n_vocab);
    assert_eq!(tok.bos_id(), Some(sp.bos));
    assert_eq!(tok.add_bos_default(), sp.add_bos);
    assert!(tok.add_bos_default());
    assert_eq!(tok.bos_token().as_deref(), Some("<bos>"));
    assert_eq!(tok.eos_token().as_deref(), Some("<eos>"));
    assert_eq!(id("<eos>"), sp.eos);
    for t in ["<eos>", "<end_of_turn>"] {
        assert!(tok.stop_ids().contains(&id(t)), "{t} must stop generation");
    }
    for &e in &sp.eog {
        // llama.cpp also ends on the HTML tag "</s>" (a user-defined token here); we do not.
        if tok.token_text(e).as_deref() != Some("</s>") {
            assert!(tok.stop_ids().contains(&e), "llama.cpp eog id {e} missing");
        }
    }
    assert!(!tok.stop_ids().contains(&id("</s>")));
    assert_eq!(tok.stop_ids(), &[1, 106]);
    assert_eq!(tok.chat_template(), None, "the base model has no template");
    assert_eq!(tok.encode("Hi", true).unwrap(), vec![sp.bos, id("Hi")]);
    assert_eq!(tok.encode("<bos>Hi", true).unwrap(), vec![sp.bos, id("Hi")], "no double BOS");
    assert_eq!(tok.encode("<start_of_turn>", false).unwrap(), vec![id("<start_of_turn>")]);
    assert_eq!(tok.decode(&[sp.bos, id("<start_of_turn>"), id("user")]).unwrap(), "<start_of_turn>user");
}

#[test]
fn qwen2_special_tokens() {
    let tok = qwen();
    let sp = special("qwen2");
    let id = |s: &str| tok.inner().token_to_id(s).unwrap();
    assert_eq!(tok.vocab_size(), sp.n_vocab);
    assert_eq!(tok.bos_id(), Some(sp.bos));
    assert_eq!(tok.add_bos_default(), sp.add_bos);
    assert!(!tok.add_bos_default());
    assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
    assert_eq!(id("<|im_end|>"), sp.eos);
    for t in ["<|im_end|>", "<|endoftext|>"] {
        assert!(tok.stop_ids().contains(&id(t)), "{t} must stop generation");
    }
    for &e in &sp.eog {
        if tok.token_text(e).as_deref() != Some("</s>") {
            assert!(tok.stop_ids().contains(&e), "llama.cpp eog id {e} missing");
        }
    }
    assert!(!tok.stop_ids().contains(&id("</s>")), "</s> is ordinary HTML here");
    assert_eq!(tok.stop_ids(), &[151643, 151645, 151662, 151663, 151664]);
    // llama.cpp forces the normal token "</s>" to a control token: parsed out of the text.
    assert_eq!(tok.encode("a</s>b", false).unwrap(), vec![id("a"), id("</s>"), id("b")]);
    assert!(!tok.stop_ids().contains(&id("<|im_start|>")));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    // add_bos is false for Qwen: no BOS even when asked.
    assert_eq!(tok.encode("Hi", true).unwrap(), tok.encode("Hi", false).unwrap());
    // Qwen's BOS id is <|endoftext|>: decode keeps it, as the model does not add BOS.
    assert_eq!(tok.decode(&[id("<|endoftext|>")]).unwrap(), "<|endoftext|>");
}

#[test]
fn unsupported_models_and_overrides() {
    let mut ct = header(QWEN);
    ct.metadata.insert("tokenizer.ggml.model".into(), candle_core::quantized::gguf_file::Value::String("bert".into()));
    let err = GgufTokenizer::from_gguf(&ct).unwrap_err().to_string();
    assert!(err.contains("\"bert\""), "{err}");

    // --tokenizer: a tokenizer.json override keeps the GGUF's special-token metadata.
    let ct = header(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    qwen().inner().save(&path, false).unwrap();
    let over = Arc::new(GgufTokenizer::with_tokenizer_json(&ct, &path).unwrap());
    assert_eq!(over.stop_ids(), qwen().stop_ids());
    assert_eq!(over.bos_id(), qwen().bos_id());
    assert_eq!(over.chat_template(), qwen().chat_template());
    for c in fixtures("qwen2").iter().take(120) {
        let ids = over.encode(&c.text, false).unwrap();
        assert_eq!(ids, c.ids, "{:?}", c.text);
        assert_eq!(over.decode(&ids).unwrap(), c.text);
        let mut stream = TokenStream::new(over.clone());
        let mut out = String::new();
        for &i in &ids {
            out.extend(stream.push(i).unwrap());
        }
        out.extend(stream.finish().unwrap());
        assert_eq!(out, c.text, "override stream");
    }
}

#[test]
fn speed() {
    let prompt: String =
        fixtures("qwen2").iter().map(|c| c.text.as_str()).collect::<String>().chars().take(2000).collect();
    for (name, tok) in [("gemma3", gemma()), ("qwen2", qwen())] {
        let _ = tok.encode(&prompt, true).unwrap();
        let start = Instant::now();
        let reps = 20;
        for i in 0..reps {
            // Vary the text so no cache hides the cost.
            let ids = tok.encode(&format!("{i} {prompt}"), true).unwrap();
            assert!(!ids.is_empty());
        }
        let per = start.elapsed() / reps;
        eprintln!("{name}: encoding 2,000 chars takes {per:?}");
        assert!(per.as_millis() < 100, "{name}: encoding 2,000 chars took {per:?}");
    }
}
