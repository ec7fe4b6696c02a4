//! Hyper-parameters read from `{architecture}.*` metadata keys, with llama.cpp's defaults.

use gguf::Metadata;
use runtime::Attention;

use crate::ModelError;

/// What the forward pass needs to know about a model's shape.
#[derive(Clone, Debug)]
pub struct Hparams {
    /// `general.architecture`.
    pub arch: String,
    /// Vocabulary size (rows of the embedding matrix).
    pub n_vocab: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Values per head (`attention.key_length`, else n_embd / n_head).
    pub head_dim: usize,
    /// Hidden width of the feed-forward network.
    pub n_ff: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// RoPE linear scaling (1 / factor; 1 when none).
    pub rope_freq_scale: f32,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// Sliding-window size, for architectures with local layers.
    pub sliding_window: Option<u32>,
}

/// Reads `{arch}.{key}` values with errors that name the key.
pub struct Keys<'a> {
    m: &'a Metadata,
    arch: &'a str,
}

impl<'a> Keys<'a> {
    /// Keys of architecture `arch`.
    pub fn new(m: &'a Metadata, arch: &'a str) -> Keys<'a> {
        Keys { m, arch }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// A required positive integer.
    pub fn usize(&self, k: &str) -> Result<usize, ModelError> {
        let key = self.key(k);
        match self.m.get_u64(&key) {
            Some(v) if v > 0 && v < (1 << 40) => Ok(v as usize),
            Some(v) => Err(ModelError::BadMetadata(key, format!("{v} is out of range"))),
            None => Err(ModelError::BadMetadata(
                key,
                "missing or not an integer".into(),
            )),
        }
    }

    /// An optional positive integer.
    pub fn usize_or(&self, k: &str, default: usize) -> Result<usize, ModelError> {
        if self.m.get(&self.key(k)).is_some() {
            self.usize(k)
        } else {
            Ok(default)
        }
    }

    /// An optional number.
    pub fn f32_or(&self, k: &str, default: f32) -> Result<f32, ModelError> {
        let key = self.key(k);
        match self.m.get(&key) {
            None => Ok(default),
            Some(v) => v
                .as_f32()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ModelError::BadMetadata(key, format!("{v} is not a number"))),
        }
    }
}

impl Hparams {
    /// The common hyper-parameters of a decoder-only transformer. The vocabulary size is
    /// the tokenizer's token count, else `{arch}.vocab_size`.
    pub fn read(m: &Metadata, arch: &str) -> Result<Hparams, ModelError> {
        let k = Keys::new(m, arch);
        let n_vocab = match m.get_array("tokenizer.ggml.tokens").map_or(0, |a| a.len()) {
            0 => m.get_u64(&format!("{arch}.vocab_size")).unwrap_or(0) as usize,
            n => n,
        };
        let n_embd = k.usize("embedding_length")?;
        let n_head = k.usize("attention.head_count")?;
        let n_head_kv = k.usize_or("attention.head_count_kv", n_head)?;
        let head_dim = k.usize_or("attention.key_length", n_embd / n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(ModelError::BadMetadata(
                format!("{arch}.attention.head_count_kv"),
                format!("{n_head} query heads cannot share {n_head_kv} key/value heads evenly"),
            ));
        }
        let scaling = match m.get_str(&format!("{arch}.rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / k.f32_or("rope.scaling.factor", 1.0)?,
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "RoPE scaling {other:?} ({arch}.rope.scaling.type)"
                )))
            }
        };
        let n_rot = k.usize_or("rope.dimension_count", head_dim)?;
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ModelError::BadMetadata(
                format!("{arch}.rope.dimension_count"),
                format!("{n_rot} for heads of {head_dim}"),
            ));
        }
        Ok(Hparams {
            arch: arch.to_string(),
            n_vocab,
            n_embd,
            n_layer: k.usize("block_count")?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: k.usize("feed_forward_length")?,
            eps: k.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_base: k.f32_or("rope.freq_base", 10_000.0)?,
            n_rot,
            rope_freq_scale: scaling,
            n_ctx_train: k.usize_or("context_length", 4096)?,
            sliding_window: m
                .get_u32(&format!("{arch}.attention.sliding_window"))
                .filter(|&w| w > 0),
        })
    }

    /// The attention shape of these heads, scaled by 1/√head_dim, with this sliding window.
    pub fn attention(&self, window: Option<u32>) -> Attention {
        Attention {
            n_heads: self.n_head,
            n_kv_heads: self.n_head_kv,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window,
            softcap: None,
        }
    }

    /// Values per token in K (and in V).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
