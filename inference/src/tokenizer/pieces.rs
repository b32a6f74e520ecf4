//! How ids turn back into bytes: every token's fixed byte string, as llama.cpp's
//! `token_to_piece(special = true)` renders it, in one table.
use super::bpe::byte_chars;
use super::meta::{Meta, TYPE_BYTE};
use super::spm::SPM_SPACE;
use std::collections::HashMap;

/// How ids turn back into bytes.
pub(super) enum Pieces {
    /// Each id's bytes, as llama.cpp renders it: `bytes[offsets[id]..offsets[id + 1]]`.
    Table { bytes: Vec<u8>, offsets: Vec<u32> },
    /// A tokenizer.json override: decode through its own decoder.
    Hf,
}

/// Parses `<0xAB>`.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes llama.cpp's `token_to_piece(special = true)` gives for each id, in one table.
pub(super) fn piece_table(meta: &Meta, byte_level: bool) -> Pieces {
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
