//! A `tokenizers::Tokenizer` built from a GGUF file's `tokenizer.ggml.*` metadata, matching
//! llama.cpp id for id, and a UTF-8-safe streaming detokenizer.
//!
//! Two GGUF tokenizer models are supported (`tokenizer.ggml.model`):
//!
//! - `llama` (SentencePiece, e.g. Gemma 3): llama.cpp merges adjacent symbols greedily, always
//!   taking the pair whose merged piece has the highest score (ties: leftmost), and falls back to
//!   `<0xXX>` byte tokens for what is left unmerged. That is a BPE whose merges are every split of
//!   a vocabulary piece into two vocabulary pieces, ranked by the merged piece's score, with
//!   `byte_fallback`. Spaces become `▁`; a `▁` is prepended to each text fragment only when
//!   `tokenizer.ggml.add_space_prefix` says so (Gemma: no).
//! - `gpt2` (byte-level BPE, e.g. Qwen 2.5): the GGUF's vocab and ranked merges, the regex
//!   pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, then the byte-level mapping.
//!   No Unicode normalization (llama.cpp does none).
//!
//! In both, control (type 3), user-defined (type 4) and unknown (type 2) tokens are added tokens,
//! matched in the raw text before anything else, like llama.cpp's `parse_special = true`
//! (user-defined ones such as Gemma's `"\n\n"` or `"<b>"` are always matched there). So are the
//! tokens llama.cpp's loader turns into control tokens by their text (end-of-turn, FIM and
//! end-of-generation texts, e.g. Qwen's normal token `</s>`), so that ids match llama.cpp's.
//!
//! Decoding follows llama.cpp's `token_to_piece` with special tokens rendered: every token has a
//! fixed byte string (normal pieces with `▁` -> space or byte-level unmapped, byte tokens as their
//! byte, special/user-defined tokens as their text), and the text is those bytes, concatenated,
//! as lossy UTF-8. That makes streaming exact and cheap: see [`TokenStream`].
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// SentencePiece's visible space.
const SPM_SPACE: char = '\u{2581}';

// llama.cpp's vocab loader finds some special tokens by their text, forces each one it finds
// to CONTROL (so it is parsed out of the text like any control token) and ends generation on
// some of them. These are its lists (llama-vocab.cpp, as vendored by llama-cpp-python 0.3.36).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Every token with one of these texts ends generation (and is forced to CONTROL).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// llama.cpp's pre-tokenizer regexes (applied one after the other), by `tokenizer.ggml.pre`.
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Returns (regexes, ignore_merges) for a `tokenizer.ggml.pre` value.
fn bpe_pre_tokenizer(pre: Option<&str>) -> Result<(Vec<&'static str>, bool)> {
    Ok(match pre.unwrap_or("default") {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (vec![RE_QWEN2], false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![RE_LLAMA3], true),
        "gpt-2" | "phi-2" => (vec![RE_GPT2], false),
        "default" => (vec![r"[\p{P}\$\+<=>\^~\|]+", RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], false),
        other => bail!(
            "unsupported tokenizer.ggml.pre {other:?} for a gpt2 tokenizer \
             (supported: qwen2, llama3/llama-bpe, gpt-2, default); pass --tokenizer with a tokenizer.json"
        ),
    })
}

/// How ids turn back into bytes.
enum Pieces {
    /// Each id's bytes, as llama.cpp renders it: `bytes[offsets[id]..offsets[id + 1]]`.
    Table { bytes: Vec<u8>, offsets: Vec<u32> },
    /// A tokenizer.json override: decode through its own decoder.
    Hf,
}

/// A tokenizer for one GGUF model: the `tokenizers::Tokenizer` plus the special-token facts
/// from the metadata (BOS, whether to add it, the ids that end generation, the chat template).
pub struct GgufTokenizer {
    inner: Tokenizer,
    pieces: Pieces,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    /// llama.cpp strips the space it prepended to the first piece when it added a prefix space.
    strip_leading_space: bool,
    stop_ids: Vec<u32>,
    vocab_size: usize,
    chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

/// The `tokenizer.ggml.*` metadata, borrowed from the GGUF header.
struct Meta<'a> {
    ct: &'a Content,
    tokens: Vec<&'a str>,
    types: Vec<i32>,
    /// What llama.cpp decides from token texts.
    text: TextSpecials,
}

/// The special tokens llama.cpp's loader finds by text (see [`EOT_TEXTS`] and the lists below it).
#[derive(Default)]
struct TextSpecials {
    /// Tokens it turns into CONTROL tokens.
    forced_control: HashSet<u32>,
    /// A `</s>` it turns into a NORMAL token (models with a normal `</s>`, like Gemma 4).
    demoted: Option<u32>,
    /// Its end-of-generation set (`llama_vocab_is_eog`).
    eog: Vec<u32>,
    /// Ids named by metadata keys (EOS, EOT, EOM, FIM), as opposed to found by text.
    from_metadata: HashSet<u32>,
}

impl<'a> Meta<'a> {
    fn read(ct: &'a Content) -> Result<Self> {
        let tokens = array(ct, "tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.tokens"))?
            .iter()
            .map(|v| v.to_string().map(|s| s.as_str()).map_err(|e| anyhow!("tokenizer.ggml.tokens: {e}")))
            .collect::<Result<Vec<_>>>()?;
        let types = match array(ct, "tokenizer.ggml.token_type")? {
            Some(a) => {
                let t = a.iter().map(int_value).collect::<Result<Vec<i64>>>().context("tokenizer.ggml.token_type")?;
                if t.len() != tokens.len() {
                    bail!("tokenizer.ggml.token_type has {} entries for {} tokens", t.len(), tokens.len());
                }
                t.into_iter().map(|x| x as i32).collect()
            }
            None => vec![TYPE_NORMAL; tokens.len()],
        };
        let mut meta = Self { ct, tokens, types, text: TextSpecials::default() };
        meta.text = text_specials(&meta);
        Ok(meta)
    }

    fn str(&self, key: &str) -> Option<&'a str> {
        match self.ct.metadata.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.ct.metadata.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => int_value(v).ok().map(|x| x != 0),
            None => None,
        }
    }

    /// A token id from the metadata; ids outside the vocab count as absent (as in llama.cpp).
    fn id(&self, key: &str) -> Option<u32> {
        let v = int_value(self.ct.metadata.get(key)?).ok()?;
        (v >= 0 && (v as usize) < self.tokens.len()).then_some(v as u32)
    }

    /// Whether llama.cpp matches this token in the raw text before tokenizing (its control,
    /// user-defined and unknown tokens, after the by-text overrides).
    fn is_special_type(&self, id: usize) -> bool {
        if self.text.demoted == Some(id as u32) {
            return false;
        }
        matches!(self.types[id], TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN)
            || self.text.forced_control.contains(&(id as u32))
    }
}

fn array<'a>(ct: &'a Content, key: &str) -> Result<Option<&'a Vec<Value>>> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(v) => Ok(Some(v.to_vec().map_err(|e| anyhow!("{key}: {e}"))?)),
    }
}

fn int_value(v: &Value) -> Result<i64> {
    Ok(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => *x as i64,
        Value::I64(x) => *x,
        other => bail!("expected an integer, found {:?}", other.value_type()),
    })
}

fn float_value(v: &Value) -> Result<f32> {
    Ok(match v {
        Value::F32(x) => *x,
        Value::F64(x) => *x as f32,
        other => int_value(other)? as f32,
    })
}

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// GPT-2's byte <-> printable-char table: `BYTE_CHARS[b]` stands for byte `b`.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

/// Parses `<0xAB>`.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The added tokens: every control, user-defined and unknown token, matched in the raw text.
fn added_tokens(meta: &Meta) -> Vec<AddedToken> {
    (0..meta.tokens.len())
        .filter(|&i| meta.is_special_type(i) && !meta.tokens[i].is_empty())
        .map(|i| {
            let special = meta.types[i] != TYPE_USER_DEFINED || meta.text.forced_control.contains(&(i as u32));
            AddedToken::from(meta.tokens[i], special).normalized(false)
        })
        .collect()
}

/// The bytes llama.cpp's `token_to_piece(special = true)` gives for each id, in one table.
fn piece_table(meta: &Meta, byte_level: bool) -> Pieces {
    let mut bytes = Vec::with_capacity(meta.tokens.iter().map(|t| t.len()).sum());
    let mut offsets = Vec::with_capacity(meta.tokens.len() + 1);
    offsets.push(0u32);
    let char_byte: HashMap<char, u8> =
        if byte_level { byte_chars().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect() } else { HashMap::new() };
    let mut buf = [0u8; 4];
    for (i, text) in meta.tokens.iter().enumerate() {
        let ty = meta.types[i];
        if meta.is_special_type(i) {
            bytes.extend_from_slice(text.as_bytes());
        } else if byte_level {
            for c in text.chars() {
                match char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                }
            }
        } else if ty == TYPE_BYTE {
            match byte_token_value(text) {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(text.as_bytes()),
            }
        } else {
            for c in text.chars() {
                let c = if c == SPM_SPACE { ' ' } else { c };
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        offsets.push(bytes.len() as u32);
    }
    Pieces::Table { bytes, offsets }
}

/// SentencePiece (llama.cpp "llama"/SPM) as a byte-fallback BPE; see the module docs.
fn build_spm(meta: &Meta, add_space_prefix: bool) -> Result<Tokenizer> {
    let n = meta.tokens.len();
    let scores: Vec<f32> = match array(meta.ct, "tokenizer.ggml.scores")? {
        Some(a) => a.iter().map(float_value).collect::<Result<_>>().context("tokenizer.ggml.scores")?,
        None => vec![0.0; n],
    };
    if scores.len() != n {
        bail!("tokenizer.ggml.scores has {} entries for {} tokens", scores.len(), n);
    }
    // The owned vocab (for the model) on a second thread, the merges here.
    let (vocab, merges) = std::thread::scope(|s| {
        let vocab =
            s.spawn(|| -> Vocab { meta.tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect() });
        let known: HashSet<&str> = meta.tokens.iter().copied().collect();
        // Every piece that can come out of a merge (added tokens never reach the model), split
        // every way into two vocab pieces. Rank: the merged piece's score, highest first.
        let mut targets: Vec<u32> = (0..n as u32)
            .filter(|&i| !meta.is_special_type(i as usize) && meta.tokens[i as usize].chars().nth(1).is_some())
            .collect();
        targets.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
        let mut merges = Vec::with_capacity(targets.len() * 2);
        for &id in &targets {
            let piece = meta.tokens[id as usize];
            for (k, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(k);
                if known.contains(left) && known.contains(right) {
                    merges.push((left.to_string(), right.to_string()));
                }
            }
        }
        (vocab.join().expect("vocab thread panicked"), merges)
    });
    let unk = meta.id("tokenizer.ggml.unknown_token_id").map(|i| meta.tokens[i as usize].to_string());
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder.build().map_err(tk_err).context("building the SentencePiece BPE")?;

    let mut tk = Tokenizer::new(model);
    let replace = Replace::new(" ", SPM_SPACE.to_string()).map_err(tk_err)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPM_SPACE.to_string()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tk.with_normalizer(Some(normalizer)).map_err(tk_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE.to_string(), " ").map_err(tk_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    tk.add_tokens(added_tokens(meta)).map_err(tk_err)?;
    Ok(tk)
}

/// GPT-2 style byte-level BPE (llama.cpp "gpt2"/BPE).
fn build_bpe(meta: &Meta) -> Result<Tokenizer> {
    let (regexes, ignore_merges) = bpe_pre_tokenizer(meta.str("tokenizer.ggml.pre"))?;
    let vocab: Vocab = meta.tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let raw_merges = array(meta.ct, "tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("GGUF gpt2 tokenizer has no tokenizer.ggml.merges"))?;
    let mut merges = Vec::with_capacity(raw_merges.len());
    for m in raw_merges {
        let m = m.to_string().map_err(|e| anyhow!("tokenizer.ggml.merges: {e}"))?;
        // A merge whose parts or result are not in the vocab can never apply; llama.cpp ignores it.
        if let Some((a, b)) = m.split_once(' ') {
            if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}")) {
                merges.push((a.to_string(), b.to_string()));
            }
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tk_err)
        .context("building the byte-level BPE")?;
    let mut tk = Tokenizer::new(model);
    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    for re in regexes {
        pre.push(
            Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(tk_err)?
                .into(),
        );
    }
    pre.push(ByteLevel::new(false, false, false).into());
    tk.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre)));
    tk.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    tk.add_tokens(added_tokens(meta)).map_err(tk_err)?;
    Ok(tk)
}

/// Mirrors llama.cpp's loader: special tokens found by text, and the end-of-generation set.
fn text_specials(meta: &Meta) -> TextSpecials {
    let lists: [&[&str]; 10] = [
        EOT_TEXTS,
        EOM_TEXTS,
        FIM_PRE_TEXTS,
        FIM_SUF_TEXTS,
        FIM_MID_TEXTS,
        FIM_PAD_TEXTS,
        FIM_REP_TEXTS,
        FIM_SEP_TEXTS,
        EOG_TEXTS,
        &["<|plamo:eos|>"],
    ];
    let wanted: HashSet<&str> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    let mut found: HashMap<&str, u32> = HashMap::new();
    for (i, t) in meta.tokens.iter().enumerate() {
        if wanted.contains(t) {
            found.insert(t, i as u32);
        }
    }
    let mut out = TextSpecials::default();
    let mut eog = std::collections::BTreeSet::new();
    // A metadata id wins; otherwise the first listed text in the vocab, forced to CONTROL.
    // (llama.cpp takes whichever its hash map yields first; the lists rarely have two hits.)
    let detect = |key: &str, texts: &[&str], out: &mut TextSpecials| -> Option<u32> {
        if let Some(id) = meta.id(key) {
            out.from_metadata.insert(id);
            return Some(id);
        }
        let id = texts.iter().find_map(|t| found.get(t).copied())?;
        out.forced_control.insert(id);
        Some(id)
    };
    let eot = detect("tokenizer.ggml.eot_token_id", EOT_TEXTS, &mut out);
    let eom = detect("tokenizer.ggml.eom_token_id", EOM_TEXTS, &mut out);
    detect("tokenizer.ggml.fim_pre_token_id", FIM_PRE_TEXTS, &mut out);
    detect("tokenizer.ggml.fim_suf_token_id", FIM_SUF_TEXTS, &mut out);
    detect("tokenizer.ggml.fim_mid_token_id", FIM_MID_TEXTS, &mut out);
    eog.extend(detect("tokenizer.ggml.fim_pad_token_id", FIM_PAD_TEXTS, &mut out));
    eog.extend(detect("tokenizer.ggml.fim_rep_token_id", FIM_REP_TEXTS, &mut out));
    eog.extend(detect("tokenizer.ggml.fim_sep_token_id", FIM_SEP_TEXTS, &mut out));
    for t in EOG_TEXTS {
        if let Some(&id) = found.get(t) {
            eog.insert(id);
            out.forced_control.insert(id);
        }
    }
    let text_of = |id: &u32| meta.tokens[*id as usize];
    // A model with a normal "</s>" (Gemma 4's "<|tool_response>", PLaMo's "<|plamo:eos|>").
    if eog.iter().any(|id| matches!(text_of(id), "<|tool_response>" | "<|plamo:eos|>")) {
        if let Some(&s) = found.get("</s>") {
            eog.remove(&s);
            out.forced_control.remove(&s);
            out.demoted = Some(s);
        }
    }
    let eos = meta.id("tokenizer.ggml.eos_token_id");
    out.from_metadata.extend(eos);
    eog.extend(eos);
    eog.extend(eot);
    eog.extend(eom);
    // o200k_harmony / solar-open: "<|end|>" does not end generation there.
    let has = |t: &str| eog.iter().any(|id| text_of(id) == t);
    if (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")) {
        if let Some(end) = found.get("<|end|>") {
            eog.remove(end);
        }
    }
    out.eog = eog.into_iter().collect();
    out
}

/// The ids that end generation: llama.cpp's set, less the tokens it found only by text that the
/// GGUF does not mark as control tokens. Those are ordinary text in these models: llama.cpp
/// stops on `</s>` for PaddleOCR's sake, but it is an HTML tag to Gemma 3 (a user-defined
/// token) and a normal token to Qwen 2.5.
fn stop_ids(meta: &Meta) -> Vec<u32> {
    meta.text
        .eog
        .iter()
        .copied()
        .filter(|id| meta.text.from_metadata.contains(id) || meta.types[*id as usize] == TYPE_CONTROL)
        .collect()
}

impl GgufTokenizer {
    /// Builds from GGUF metadata; an unsupported `tokenizer.ggml.model` is an error naming it.
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let meta = Meta::read(ct)?;
        let model = meta.str("tokenizer.ggml.model").ok_or_else(|| anyhow!("GGUF has no tokenizer.ggml.model"))?;
        let (inner, pieces, strip) = match model {
            "llama" => {
                // llama.cpp's default for SentencePiece models is to add the prefix space.
                let prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let (tk, pieces) = std::thread::scope(|s| {
                    let pieces = s.spawn(|| piece_table(&meta, false));
                    let tk = build_spm(&meta, prefix);
                    (tk, pieces.join().expect("piece table thread panicked"))
                });
                (tk?, pieces, prefix)
            }
            "gpt2" => (build_bpe(&meta)?, piece_table(&meta, true), false),
            other => bail!("unsupported tokenizer.ggml.model {other:?} (supported: \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE))"),
        };
        Ok(Self::assemble(&meta, inner, pieces, strip, meta.tokens.len()))
    }

    /// Loads an override tokenizer.json (the `--tokenizer` flag); BOS, `add_bos`, the stop ids
    /// and the chat template still come from the GGUF metadata.
    pub fn with_tokenizer_json(ct: &Content, path: &Path) -> Result<Self> {
        let meta = Meta::read(ct)?;
        let inner = Tokenizer::from_file(path)
            .map_err(tk_err)
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        let size = inner.get_vocab_size(true);
        Ok(Self::assemble(&meta, inner, Pieces::Hf, false, size))
    }

    fn assemble(meta: &Meta, inner: Tokenizer, pieces: Pieces, strip: bool, vocab_size: usize) -> Self {
        let model = meta.str("tokenizer.ggml.model").unwrap_or("");
        Self {
            inner,
            pieces,
            bos_id: meta.id("tokenizer.ggml.bos_token_id"),
            eos_id: meta.id("tokenizer.ggml.eos_token_id"),
            // llama.cpp: SentencePiece models add BOS unless told not to; BPE ones only when told.
            add_bos: meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
            strip_leading_space: strip,
            stop_ids: stop_ids(meta),
            vocab_size,
            chat_template: meta.str("tokenizer.chat_template").map(str::to_string),
        }
    }

    /// Token ids for `text`. Special/control tokens written in the text (`<|im_start|>`,
    /// `<start_of_turn>`, ...) are parsed as those tokens, like llama.cpp's `parse_special`.
    /// BOS is prepended when `add_bos` is true *and* the model's metadata asks for it
    /// ([`Self::add_bos_default`]); it is never doubled: a text that already starts with the BOS
    /// token (a chat template's `{{ bos_token }}`) gets no second one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 1);
        if let (true, true, Some(bos)) = (add_bos, self.add_bos, self.bos_id) {
            if body.first() != Some(&bos) {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(body);
        Ok(ids)
    }

    /// Decodes ids to text. Nothing is skipped except BOS, and BOS only for models that add it
    /// ([`Self::add_bos_default`]; e.g. Qwen's BOS id is its `<|endoftext|>`, which is kept).
    /// Special tokens are rendered as their text. Invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.pieces {
            Pieces::Table { .. } => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                let mut first = true;
                for &id in ids {
                    bytes.extend_from_slice(self.piece(id, first)?);
                    first &= self.skipped(id);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Pieces::Hf => {
                let kept: Vec<u32> = ids.iter().copied().filter(|&id| !self.skipped(id)).collect();
                self.inner.decode(&kept, false).map_err(tk_err)
            }
        }
    }

    fn skipped(&self, id: u32) -> bool {
        self.add_bos && Some(id) == self.bos_id
    }

    /// The bytes of one id (table mode only). `first`: the first id of the text, whose
    /// prepended space llama.cpp strips when the model adds a space prefix.
    fn piece(&self, id: u32, first: bool) -> Result<&[u8]> {
        let Pieces::Table { bytes, offsets } = &self.pieces else {
            unreachable!("piece() is only used with a piece table")
        };
        if self.skipped(id) {
            return Ok(&[]);
        }
        let i = id as usize;
        if i + 1 >= offsets.len() {
            bail!("token id {id} is outside the vocabulary ({} tokens)", offsets.len() - 1);
        }
        let p = &bytes[offsets[i] as usize..offsets[i + 1] as usize];
        Ok(if first && self.strip_leading_space && p.first() == Some(&b' ') { &p[1..] } else { p })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// `tokenizer.ggml.add_bos_token` (Gemma: true, Qwen: false).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// All ids that end generation, sorted: EOS, EOT/EOM and the FIM pad/repo/file-separator
    /// ids from the metadata (or found by their well-known text), plus every well-known
    /// end-of-turn text that is a control token in the vocab (`<end_of_turn>`, `<|im_end|>`,
    /// `<|endoftext|>`, ...). This is llama.cpp's `llama_vocab_is_eog` set, less the ordinary
    /// (non-control) pieces llama.cpp also stops on, like the HTML tag `</s>`
    /// (Gemma 3: `[1, 106]`; Qwen 2.5 Coder: `<|endoftext|>`, `<|im_end|>`, `<|fim_pad|>`,
    /// `<|repo_name|>`, `<|file_sep|>`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `tokenizer.chat_template` from the metadata.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The raw vocabulary piece (e.g. `"<bos>"`, `"▁the"`, `"Ġthe"`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<String> {
        self.token_text(self.bos_id?)
    }

    pub fn eos_token(&self) -> Option<String> {
        self.token_text(self.eos_id?)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Incremental, UTF-8-safe detokenizer for streaming. It owns an `Arc<GgufTokenizer>` so it
/// can live on a generation thread. [`TokenStream::push`] returns only complete text: never
/// half of a UTF-8 sequence (a byte-fallback `<0xE4>` or a byte-level fragment of an emoji is
/// held until the character is complete). Everything it yields, then [`TokenStream::finish`],
/// concatenates to exactly `decode(all ids)`.
///
/// Cost per token: with GGUF-built tokenizers, O(bytes of the token) (the held tail is at most
/// 3 bytes). With a tokenizer.json override, it decodes a small window of recent ids (the
/// prefix-offset/read-offset scheme of text-generation-inference).
pub struct TokenStream {
    tok: Arc<GgufTokenizer>,
    /// Table mode: bytes not yet returned (an incomplete UTF-8 sequence).
    pending: Vec<u8>,
    /// Table mode: no id pushed yet (for the prefix-space strip).
    first: bool,
    /// Window mode.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TokenStream {
    pub fn new(tok: Arc<GgufTokenizer>) -> Self {
        Self { tok, pending: Vec::new(), first: true, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Adds one id; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        if let Pieces::Table { .. } = self.tok.pieces {
            let piece = self.tok.piece(id, self.first)?;
            if self.tok.skipped(id) {
                return Ok(None);
            }
            self.first = false;
            self.pending.extend_from_slice(piece);
            return Ok(take_complete_utf8(&mut self.pending, false));
        }
        if self.tok.skipped(id) {
            return Ok(None);
        }
        self.ids.push(id);
        let prefix = self.tok.inner.decode(&self.ids[self.prefix_offset..self.read_offset], false).map_err(tk_err)?;
        let text = self.tok.inner.decode(&self.ids[self.prefix_offset..], false).map_err(tk_err)?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.is_char_boundary(prefix.len()) {
            let new = text[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    /// Flushes whatever is held (an incomplete sequence at the very end becomes U+FFFD, as in
    /// `decode`).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if let Pieces::Table { .. } = self.tok.pieces {
            return Ok(take_complete_utf8(&mut self.pending, true));
        }
        let prefix = self.tok.inner.decode(&self.ids[self.prefix_offset..self.read_offset], false).map_err(tk_err)?;
        let text = self.tok.inner.decode(&self.ids[self.prefix_offset..], false).map_err(tk_err)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(text.get(prefix.len()..).filter(|s| !s.is_empty()).map(str::to_string))
    }
}

/// Removes and returns the longest prefix of `buf` that is settled text: valid UTF-8, with
/// each invalid sequence replaced by U+FFFD exactly as `String::from_utf8_lossy` would. An
/// incomplete sequence at the end stays in `buf` unless `flush`.
fn take_complete_utf8(buf: &mut Vec<u8>, flush: bool) -> Option<String> {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..valid]).expect("validated"));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start = valid + n;
                    }
                    None => {
                        // Truncated sequence at the end: wait for more bytes.
                        if flush {
                            out.push('\u{FFFD}');
                            start = buf.len();
                        } else {
                            start = valid;
                        }
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod llama_cpp_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    /// A tiny SentencePiece vocab in an in-memory GGUF header.
    fn spm_content(model: &str) -> Content {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<bos>".into(), "<eos>".into(), "<end_of_turn>".into()];
        let mut types = vec![TYPE_CONTROL; 4];
        let mut scores = vec![0.0f32; 4];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
            scores.push(0.0);
        }
        for (i, p) in ["▁", "h", "e", "l", "o", "he", "ll", "llo", "hello", "▁hello", "é"].iter().enumerate() {
            tokens.push(p.to_string());
            types.push(TYPE_NORMAL);
            scores.push(-(i as f32));
        }
        tokens.push("\n\n".into());
        types.push(TYPE_USER_DEFINED);
        scores.push(-1000.0);
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".to_string(), Value::String(model.into()));
        md.insert("tokenizer.ggml.tokens".to_string(), Value::Array(tokens.into_iter().map(Value::String).collect()));
        md.insert("tokenizer.ggml.token_type".to_string(), Value::Array(types.into_iter().map(Value::I32).collect()));
        md.insert("tokenizer.ggml.scores".to_string(), Value::Array(scores.into_iter().map(Value::F32).collect()));
        md.insert("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2));
        md.insert("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(true));
        md.insert("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(false));
        Content { magic: VersionedMagic::GgufV3, metadata: md, tensor_infos: HashMap::new(), tensor_data_offset: 0 }
    }

    #[test]
    fn unsupported_model_is_named() {
        let err = GgufTokenizer::from_gguf(&spm_content("rwkv")).unwrap_err().to_string();
        assert!(err.contains("\"rwkv\""), "{err}");
    }

    #[test]
    fn tiny_spm_merges_by_score_and_falls_back_to_bytes() {
        let tok = GgufTokenizer::from_gguf(&spm_content("llama")).unwrap();
        let id = |s: &str| tok.inner().token_to_id(s).unwrap();
        assert_eq!(tok.encode("hello hello", false).unwrap(), vec![id("hello"), id("▁hello")]);
        assert_eq!(tok.encode("hello", true).unwrap(), vec![1, id("hello")]);
        assert_eq!(tok.encode("<bos>hello", true).unwrap(), vec![1, id("hello")], "BOS is not doubled");
        // "ñ" is not in the vocab: two byte tokens; "\n\n" is a user-defined token.
        assert_eq!(tok.encode("ñ\n\n<end_of_turn>", false).unwrap(), vec![id("<0xC3>"), id("<0xB1>"), id("\n\n"), 3]);
        assert_eq!(tok.stop_ids(), &[2, 3]);
        let ids = tok.encode("hello ñé\n\n", true).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "hello ñé\n\n");
        let mut stream = TokenStream::new(Arc::new(tok));
        let mut got = Vec::new();
        for &i in &ids {
            got.push(stream.push(i).unwrap());
        }
        assert_eq!(got[3], None, "half of ñ is held back");
        let text: String = got.into_iter().flatten().chain(stream.finish().unwrap()).collect();
        assert_eq!(text, "hello ñé\n\n");
    }

    #[test]
    fn utf8_tail_handling_matches_from_utf8_lossy() {
        let cases: &[&[u8]] =
            &[b"abc", b"\xE4\xB8", b"\xE4\xB8a", b"\xF0\x9F\x98\x80\xF0", b"\xFFx\xC3\xA9", b"\xE4\xB8\xE4\xB8\xAD"];
        for bytes in cases {
            // Feed one byte at a time.
            let mut buf = Vec::new();
            let mut out = String::new();
            for &b in bytes.iter() {
                buf.push(b);
                out.extend(take_complete_utf8(&mut buf, false));
            }
            out.extend(take_complete_utf8(&mut buf, true));
            assert_eq!(out, String::from_utf8_lossy(bytes), "{bytes:?}");
            assert!(buf.is_empty());
        }
    }
}
