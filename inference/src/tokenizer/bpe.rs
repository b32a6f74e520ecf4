//! GPT-2 style byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`, e.g. Qwen 2.5): the
//! ranked merges, the pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`, and the
//! byte-level character table.
use super::meta::{added_tokens, array, Meta};
use super::tk_err;
use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

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

/// GPT-2's byte <-> printable-char table: `BYTE_CHARS[b]` stands for byte `b`.
pub(super) fn byte_chars() -> [char; 256] {
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

/// GPT-2 style byte-level BPE (llama.cpp "gpt2"/BPE).
pub(super) fn build_bpe(meta: &Meta) -> Result<Tokenizer> {
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
