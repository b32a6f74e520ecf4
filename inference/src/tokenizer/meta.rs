//! The `tokenizer.ggml.*` metadata of a GGUF header as the builders read it: the tokens and their
//! llama.cpp types, typed values by key, which tokens are matched in the raw text (the added
//! tokens) and which end generation.
use super::specials::{text_specials, TextSpecials};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::AddedToken;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub(super) const TYPE_NORMAL: i32 = 1;
pub(super) const TYPE_UNKNOWN: i32 = 2;
pub(super) const TYPE_CONTROL: i32 = 3;
pub(super) const TYPE_USER_DEFINED: i32 = 4;
pub(super) const TYPE_BYTE: i32 = 6;

/// The `tokenizer.ggml.*` metadata, borrowed from the GGUF header.
pub(super) struct Meta<'a> {
    pub(super) ct: &'a Content,
    pub(super) tokens: Vec<&'a str>,
    pub(super) types: Vec<i32>,
    /// What llama.cpp decides from token texts.
    pub(super) text: TextSpecials,
}

impl<'a> Meta<'a> {
    pub(super) fn read(ct: &'a Content) -> Result<Self> {
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
        meta.text = text_specials(&meta.tokens, |key| meta.id(key));
        Ok(meta)
    }

    pub(super) fn str(&self, key: &str) -> Option<&'a str> {
        match self.ct.metadata.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        match self.ct.metadata.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => int_value(v).ok().map(|x| x != 0),
            None => None,
        }
    }

    /// A token id from the metadata; ids outside the vocab count as absent (as in llama.cpp).
    pub(super) fn id(&self, key: &str) -> Option<u32> {
        let v = int_value(self.ct.metadata.get(key)?).ok()?;
        (v >= 0 && (v as usize) < self.tokens.len()).then_some(v as u32)
    }

    /// Whether llama.cpp matches this token in the raw text before tokenizing (its control,
    /// user-defined and unknown tokens, after the by-text overrides).
    pub(super) fn is_special_type(&self, id: usize) -> bool {
        if self.text.demoted == Some(id as u32) {
            return false;
        }
        matches!(self.types[id], TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN)
            || self.text.forced_control.contains(&(id as u32))
    }
}

pub(super) fn array<'a>(ct: &'a Content, key: &str) -> Result<Option<&'a Vec<Value>>> {
    match ct.metadata.get(key) {
        None => Ok(None),
        Some(v) => Ok(Some(v.to_vec().map_err(|e| anyhow!("{key}: {e}"))?)),
    }
}

pub(super) fn int_value(v: &Value) -> Result<i64> {
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

pub(super) fn float_value(v: &Value) -> Result<f32> {
    Ok(match v {
        Value::F32(x) => *x,
        Value::F64(x) => *x as f32,
        other => int_value(other)? as f32,
    })
}

/// The added tokens: every control, user-defined and unknown token, matched in the raw text.
pub(super) fn added_tokens(meta: &Meta) -> Vec<AddedToken> {
    (0..meta.tokens.len())
        .filter(|&i| meta.is_special_type(i) && !meta.tokens[i].is_empty())
        .map(|i| {
            let special = meta.types[i] != TYPE_USER_DEFINED || meta.text.forced_control.contains(&(i as u32));
            AddedToken::from(meta.tokens[i], special).normalized(false)
        })
        .collect()
}

/// The ids that end generation: llama.cpp's set, less the tokens it found only by text that the
/// GGUF does not mark as control tokens. Those are ordinary text in these models: llama.cpp
/// stops on `</s>` for PaddleOCR's sake, but it is an HTML tag to Gemma 3 (a user-defined
/// token) and a normal token to Qwen 2.5.
pub(super) fn stop_ids(meta: &Meta) -> Vec<u32> {
    meta.text
        .eog
        .iter()
        .copied()
        .filter(|id| meta.text.from_metadata.contains(id) || meta.types[*id as usize] == TYPE_CONTROL)
        .collect()
}
