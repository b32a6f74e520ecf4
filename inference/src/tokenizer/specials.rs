//! The special tokens llama.cpp's vocab loader finds by their text rather than by their type: the
//! lists it searches, and what it makes of each hit (a control token, an end of generation).
use std::collections::{HashMap, HashSet};

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

/// The special tokens llama.cpp's loader finds by text (see [`EOT_TEXTS`] and the lists below it).
#[derive(Default)]
pub(super) struct TextSpecials {
    /// Tokens it turns into CONTROL tokens.
    pub(super) forced_control: HashSet<u32>,
    /// A `</s>` it turns into a NORMAL token (models with a normal `</s>`, like Gemma 4).
    pub(super) demoted: Option<u32>,
    /// Its end-of-generation set (`llama_vocab_is_eog`).
    pub(super) eog: Vec<u32>,
    /// Ids named by metadata keys (EOS, EOT, EOM, FIM), as opposed to found by text.
    pub(super) from_metadata: HashSet<u32>,
}

/// Mirrors llama.cpp's loader: special tokens found by text, and the end-of-generation set.
pub(super) fn text_specials(tokens: &[&str], id_of: impl Fn(&str) -> Option<u32>) -> TextSpecials {
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
    for (i, t) in tokens.iter().enumerate() {
        if wanted.contains(t) {
            found.insert(t, i as u32);
        }
    }
    let mut out = TextSpecials::default();
    let mut eog = std::collections::BTreeSet::new();
    // A metadata id wins; otherwise the first listed text in the vocab, forced to CONTROL.
    // (llama.cpp takes whichever its hash map yields first; the lists rarely have two hits.)
    let detect = |key: &str, texts: &[&str], out: &mut TextSpecials| -> Option<u32> {
        if let Some(id) = id_of(key) {
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
    let text_of = |id: &u32| tokens[*id as usize];
    // A model with a normal "</s>" (Gemma 4's "<|tool_response>", PLaMo's "<|plamo:eos|>").
    if eog.iter().any(|id| matches!(text_of(id), "<|tool_response>" | "<|plamo:eos|>")) {
        if let Some(&s) = found.get("</s>") {
            eog.remove(&s);
            out.forced_control.remove(&s);
            out.demoted = Some(s);
        }
    }
    let eos = id_of("tokenizer.ggml.eos_token_id");
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
