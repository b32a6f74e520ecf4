//! Streaming detokenization: text handed out token by token, never half a UTF-8 character.
use super::pieces::Pieces;
use super::{tk_err, GgufTokenizer};
use anyhow::Result;
use std::sync::Arc;

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
pub(super) fn take_complete_utf8(buf: &mut Vec<u8>, flush: bool) -> Option<String> {
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
