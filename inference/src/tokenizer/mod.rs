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
mod bpe;
mod meta;
mod pieces;
mod specials;
mod spm;
mod stream;

use anyhow::{anyhow, bail, Context, Result};
use bpe::build_bpe;
use candle_core::quantized::gguf_file::Content;
use meta::{stop_ids, Meta};
use pieces::{piece_table, Pieces};
use spm::build_spm;
use std::path::Path;
pub use stream::TokenStream;
use tokenizers::Tokenizer;

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

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
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

#[cfg(test)]
mod llama_cpp_tests;

#[cfg(test)]
mod tests {
    use super::meta::{TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_USER_DEFINED};
    use super::stream::take_complete_utf8;
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::gguf_file::VersionedMagic;
    use std::collections::HashMap;
    use std::sync::Arc;

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
