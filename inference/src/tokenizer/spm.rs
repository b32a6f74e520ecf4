//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3) as a byte-fallback
//! BPE whose merges are every split of a vocabulary piece into two pieces, ranked by the merged
//! piece's score (llama.cpp's greedy highest-score merging).
use super::meta::{added_tokens, array, float_value, Meta};
use super::tk_err;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{NormalizerWrapper, Tokenizer};

/// SentencePiece's visible space.
pub(super) const SPM_SPACE: char = '\u{2581}';

/// SentencePiece (llama.cpp "llama"/SPM) as a byte-fallback BPE; see the module docs.
pub(super) fn build_spm(meta: &Meta, add_space_prefix: bool) -> Result<Tokenizer> {
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
