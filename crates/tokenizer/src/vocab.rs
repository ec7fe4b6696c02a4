//! The vocabulary as a GGUF file stores it: token texts, scores, types, special ids and the
//! flags that steer encoding (`add_bos_token`, `add_space_prefix`, ...).

use std::collections::HashMap;

use gguf::{Array, Metadata};

use crate::TokenizerError;

/// Token attributes as llama.cpp derives them: the type stored in the file
/// (`tokenizer.ggml.token_type`), plus CONTROL forced onto known end-of-turn and
/// fill-in-the-middle markers whatever type the file gave them.
pub mod attr {
    /// The unknown-token placeholder (type 2): special, printed only when asked for.
    pub const UNKNOWN: u8 = 1;
    /// A slot the vocabulary does not use (type 5): prints as nothing.
    pub const UNUSED: u8 = 2;
    /// An ordinary token (type 1): its text is encoded byte-level (BPE) or with `▁` for
    /// spaces (SentencePiece).
    pub const NORMAL: u8 = 4;
    /// A control token such as BOS, EOS or an end-of-turn marker (type 3): special, matched
    /// in input only when special parsing is on, printed only when asked for.
    pub const CONTROL: u8 = 8;
    /// A token added by the model's authors (type 4): always matched whole in input text and
    /// printed as its literal text.
    pub const USER_DEFINED: u8 = 16;
    /// A byte-fallback token `<0xNN>` (type 6): stands for the single byte `NN`.
    pub const BYTE: u8 = 32;

    /// The attribute of a `tokenizer.ggml.token_type` value.
    pub fn from_type(v: i64) -> u8 {
        match v {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }

    /// Control and unknown tokens: matched in text only when special parsing is on, and
    /// printed only when asked for.
    pub fn is_special(a: u8) -> bool {
        a & (CONTROL | UNKNOWN) != 0
    }
}

/// Which algorithm turns text into ids (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `gpt2`: byte-level BPE with merges and a pre-tokenizer.
    Bpe,
    /// `llama`: SentencePiece, merging by score, with byte fallback.
    Spm,
}

/// Token texts and everything about them.
pub struct Vocab {
    pub(crate) kind: ModelKind,
    pub(crate) pre: String,
    pub(crate) texts: Vec<String>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u8>,
    pub(crate) by_text: HashMap<String, u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eot: Option<u32>,
    pub(crate) unk: Option<u32>,
    pub(crate) pad: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    /// Tokens matched in raw text before the main algorithm runs (control, user-defined and
    /// unknown), longest text first.
    pub(crate) special_by_length: Vec<u32>,
    /// End-of-generation ids: EOS, EOT and the known end-of-turn markers of the vocabulary.
    pub(crate) eog: Vec<u32>,
}

/// Texts of end-of-turn markers, tried when the metadata names no EOT token.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];

/// Texts that end generation in common vocabularies (as llama.cpp treats them).
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
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
    "<|end_of_text|>",
    "</s>",
];

fn bad(key: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl Vocab {
    /// Reads the vocabulary from GGUF metadata.
    pub fn from_metadata(m: &Metadata) -> Result<Vocab, TokenizerError> {
        let model = m.get_str("tokenizer.ggml.model").ok_or_else(|| {
            bad(
                "tokenizer.ggml.model",
                "missing: this file has no tokenizer",
            )
        })?;
        let kind = match model {
            "gpt2" => ModelKind::Bpe,
            "llama" => ModelKind::Spm,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let texts = match m.get_array("tokenizer.ggml.tokens") {
            Some(Array::String(v)) => v.clone(),
            _ => {
                return Err(bad(
                    "tokenizer.ggml.tokens",
                    "missing or not an array of strings",
                ))
            }
        };
        let n = texts.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(bad("tokenizer.ggml.tokens", format!("{n} tokens")));
        }
        let scores = match m.get_array("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(Array::F32(v)) if v.len() == n => v.clone(),
            Some(a) => {
                return Err(bad(
                    "tokenizer.ggml.scores",
                    format!(
                        "expected {n} f32 values, found {} {}",
                        a.len(),
                        a.element_type().name()
                    ),
                ))
            }
        };
        let mut attrs = match m.get_array("tokenizer.ggml.token_type") {
            None => vec![attr::NORMAL; n],
            Some(a) if a.len() == n => (0..n)
                .map(|i| a.get(i).and_then(|v| v.as_i64()).map(attr::from_type))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("tokenizer.ggml.token_type", "not an integer array"))?,
            Some(a) => {
                return Err(bad(
                    "tokenizer.ggml.token_type",
                    format!("expected {n} values, found {}", a.len()),
                ))
            }
        };
        let mut by_text = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            // The first id wins for a duplicated text, like llama.cpp's map.
            by_text.entry(t.clone()).or_insert(i as u32);
        }

        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match m.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(-1) => Ok(None),
                    Some(i) if i >= 0 && (i as usize) < n => Ok(Some(i as u32)),
                    _ => Err(bad(key, format!("{v} is not a token id below {n}"))),
                },
            }
        };
        let (def_bos, def_eos, def_unk, def_add_bos, def_space) = match kind {
            ModelKind::Spm => (Some(1), Some(2), Some(0), true, true),
            ModelKind::Bpe => (Some(11), Some(11), None, false, false),
        };
        let pre = m
            .get_str("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_string();
        let bos = id("tokenizer.ggml.bos_token_id")?.or(def_bos.filter(|&i| i < n as u32));
        let eos = id("tokenizer.ggml.eos_token_id")?.or(def_eos.filter(|&i| i < n as u32));
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let eom = id("tokenizer.ggml.eom_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?.or(def_unk);
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let pre_add_bos = kind == ModelKind::Bpe
            && matches!(
                pre.as_str(),
                "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken"
            );
        let add_bos = m
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(def_add_bos || pre_add_bos);
        let add_eos = m.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let add_space_prefix = m
            .get_bool("tokenizer.ggml.add_space_prefix")
            .unwrap_or(def_space);
        if add_bos && bos.is_none() {
            return Err(bad(
                "tokenizer.ggml.bos_token_id",
                "add_bos_token is set but there is no BOS token",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(bad(
                "tokenizer.ggml.eos_token_id",
                "add_eos_token is set but there is no EOS token",
            ));
        }

        // Markers found by their text when the metadata does not name them; each is made a
        // control token, as llama.cpp does.
        let first_of = |wanted: &[&str]| -> Option<u32> {
            wanted.iter().filter_map(|t| by_text.get(*t).copied()).min()
        };
        let eot = eot.or_else(|| first_of(EOT_TEXTS));
        let eom = eom.or_else(|| first_of(&["<|eom_id|>"]));
        let fim_pad = id("tokenizer.ggml.fim_pad_token_id")?.or_else(|| first_of(FIM_PAD_TEXTS));
        let fim_rep = id("tokenizer.ggml.fim_rep_token_id")?.or_else(|| first_of(FIM_REP_TEXTS));
        let fim_sep =
            id("tokenizer.ggml.fim_sep_token_id")?.or_else(|| first_of(&["<|file_sep|>"]));
        let fim_other = [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS].map(first_of);
        let mut eog: Vec<u32> = [eos, eot, eom, fim_pad, fim_rep, fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for t in EOG_TEXTS {
            if let Some(&i) = by_text.get(*t) {
                eog.push(i);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        let forced = [eot, eom, fim_pad, fim_rep, fim_sep]
            .into_iter()
            .chain(fim_other)
            .flatten()
            .chain(EOG_TEXTS.iter().filter_map(|t| by_text.get(*t).copied()));
        for i in forced {
            attrs[i as usize] |= attr::CONTROL;
        }

        let mut special_by_length: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
                    && !texts[i as usize].is_empty()
            })
            .collect();
        special_by_length.sort_by(|&a, &b| {
            texts[b as usize]
                .len()
                .cmp(&texts[a as usize].len())
                .then(a.cmp(&b))
        });

        Ok(Vocab {
            kind,
            pre,
            texts,
            scores,
            attrs,
            by_text,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            special_by_length,
            eog,
        })
    }

    /// The attributes of token `id` ([`attr`] flags; 0 past the vocabulary).
    pub fn attr(&self, id: u32) -> u8 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// The id of a token text.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }
}
