//! What a backend is sized for (the KV cache's shape, the largest batch, the widest row) and
//! the one check every batch passes against it before a pass, on every device.

use crate::error::BackendError;
use crate::ops::{Batch, Plan};

/// How a KV cache stores keys (or values): `--cache-type-k` / `--cache-type-v`.
///
/// Quantized types use GGUF's blocks of 32 values along a row (one token's keys of one
/// layer), so `kv_dim` must be a multiple of 32 for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    /// 4 bytes a value.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes a value.
    F16,
    /// Blocks of 32 signed 8-bit levels and an f16 scale: 34 bytes per 32 values.
    Q8_0,
    /// Blocks of 32 4-bit levels and an f16 scale: 18 bytes per 32 values.
    Q4_0,
}

impl KvType {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The name on the command line (as llama.cpp's `-ctk`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The GGUF block type with the same layout.
    pub fn ggml(self) -> quant::GgmlType {
        match self {
            KvType::F32 => quant::GgmlType::F32,
            KvType::F16 => quant::GgmlType::F16,
            KvType::Q8_0 => quant::GgmlType::Q8_0,
            KvType::Q4_0 => quant::GgmlType::Q4_0,
        }
    }

    /// Values per block (1 for the float types).
    pub fn block(self) -> usize {
        match self {
            KvType::F32 | KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        }
    }

    /// Bytes of one row of `n` values (`n` a multiple of [`KvType::block`]).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n / 32 * 34,
            KvType::Q4_0 => n / 32 * 18,
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<KvType, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
                format!("unknown KV cache type '{s}' (one of: {})", names.join(", "))
            })
    }
}

/// Shape of a KV cache.
#[derive(Clone, Debug)]
pub struct KvConfig {
    /// Layers (each with its own keys and values).
    pub n_layers: usize,
    /// Values per token per layer for K (and for V): kv heads × head size.
    pub kv_dim: usize,
    /// Positions per sequence.
    pub n_ctx: usize,
    /// Sequences held at once.
    pub n_seq: usize,
    /// How keys are stored.
    pub k_type: KvType,
    /// How values are stored.
    pub v_type: KvType,
}

impl KvConfig {
    /// Bytes for keys and values.
    pub fn bytes(&self) -> usize {
        self.n_layers * self.n_seq * self.n_ctx * self.token_bytes()
    }

    /// Bytes of one position's keys and values in one layer.
    pub fn token_bytes(&self) -> usize {
        self.k_type.row_bytes(self.kv_dim) + self.v_type.row_bytes(self.kv_dim)
    }

    /// Bytes of `n` positions' keys and values over every layer: what
    /// [`crate::Device::kv_save`] writes for them.
    pub fn saved_bytes(&self, n: usize) -> usize {
        self.n_layers * n * self.token_bytes()
    }

    /// Checks a request to save or load positions `range` of sequence `seq` from `data`
    /// bytes (None: saving): the one rule both devices apply.
    pub fn check_saved(
        &self,
        seq: u32,
        range: &std::ops::Range<usize>,
        data: Option<usize>,
    ) -> Result<(), BackendError> {
        let need = self.saved_bytes(range.len());
        let why = if seq as usize >= self.n_seq {
            format!("sequence {seq} of {}", self.n_seq)
        } else if range.start > range.end || range.end > self.n_ctx {
            format!("positions {range:?} of {}", self.n_ctx)
        } else if data.is_some_and(|n| n < need) {
            format!("{} bytes for {need}", data.unwrap_or(0))
        } else {
            return Ok(());
        };
        Err(BackendError::Op {
            op: "kv_save/kv_load".into(),
            reason: why,
        })
    }

    /// Checks that the types fit the row width (quantized types need whole blocks).
    pub fn check(&self) -> Result<(), String> {
        for t in [self.k_type, self.v_type] {
            if !self.kv_dim.is_multiple_of(t.block()) {
                return Err(format!(
                    "a {t} KV cache needs rows of whole {}-value blocks; this model's are {} wide (use f16 or f32)",
                    t.block(),
                    self.kv_dim
                ));
            }
        }
        Ok(())
    }
}

/// The bounds of a backend's buffers, which every batch must fit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most tokens in a batch.
    pub max_batch: usize,
    /// Most logit rows a batch may ask for.
    pub max_logit_rows: usize,
    /// The widest input row (see [`crate::Plan::max_token_width`]).
    pub max_width: usize,
    /// Positions per sequence.
    pub n_ctx: usize,
    /// Sequences.
    pub n_seq: usize,
}

impl Limits {
    /// The bounds of the buffers `plan` declares, for batches of up to `max_batch` tokens
    /// and the KV cache `kv`.
    pub fn new(plan: &Plan, max_batch: usize, kv: &KvConfig) -> Limits {
        Limits {
            max_batch,
            max_logit_rows: plan.min_fixed_rows().unwrap_or(max_batch),
            max_width: plan.max_token_width(),
            n_ctx: kv.n_ctx,
            n_seq: kv.n_seq,
        }
    }

    /// Checks `batch` (tokens of a vocabulary of `vocab`) against these bounds: its size,
    /// logit rows, positions and sequences, token ids, one position and sequence id per
    /// token, and input rows (one per token, none wider than `max_width`).
    pub fn check(&self, batch: &Batch, vocab: usize) -> Result<(), BackendError> {
        if batch.len() > self.max_batch {
            return Err(BackendError::BatchTooLarge(batch.len(), self.max_batch));
        }
        if batch.logits.len() > self.max_logit_rows
            || batch.logits.iter().any(|&i| i as usize >= batch.len())
        {
            return Err(BackendError::BadLogits(
                batch.logits.len(),
                self.max_logit_rows,
            ));
        }
        for (i, (&pos, &seq)) in batch.pos.iter().zip(&batch.seq).enumerate() {
            if pos as usize >= self.n_ctx || seq as usize >= self.n_seq {
                return Err(BackendError::OutOfContext {
                    index: i,
                    pos,
                    seq,
                    n_ctx: self.n_ctx,
                    n_seq: self.n_seq,
                });
            }
        }
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::BadToken(t));
        }
        if batch.pos.len() != batch.len() || batch.seq.len() != batch.len() {
            return Err(BackendError::BadBatch {
                tokens: batch.len(),
                pos: batch.pos.len(),
                seq: batch.seq.len(),
            });
        }
        if !batch.embd.is_empty() {
            let n = batch.len().max(1);
            if !batch.embd.len().is_multiple_of(n) || batch.embd.len() / n > self.max_width {
                return Err(BackendError::BadEmbeddings(
                    batch.embd.len(),
                    batch.len(),
                    self.max_width,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_batch: 4,
            max_logit_rows: 2,
            max_width: 64,
            n_ctx: 16,
            n_seq: 2,
        }
    }

    #[test]
    fn batches_outside_the_bounds_are_refused() {
        let l = limits();
        let ok = Batch::one_sequence(&[1, 2, 3], 0, 1, false);
        assert!(l.check(&ok, 10).is_ok());
        let e = |b: &Batch| l.check(b, 10).unwrap_err().to_string();
        assert!(e(&Batch::one_sequence(&[1; 5], 0, 0, false)).contains("larger than the 4"));
        assert!(e(&Batch::one_sequence(&[1; 3], 0, 0, true)).contains("3 logit rows"));
        assert!(e(&Batch::one_sequence(&[1; 3], 14, 0, false)).contains("position 16"));
        assert!(e(&Batch::one_sequence(&[1; 3], 0, 2, false)).contains("sequence 2"));
        assert!(e(&Batch::one_sequence(&[10], 0, 0, false)).contains("token id 10"));
        let mut short = ok.clone();
        short.pos.pop();
        assert_eq!(
            e(&short),
            "forward: 3 tokens with 2 positions and 3 sequence ids"
        );
        let mut wide = ok.clone();
        wide.embd = vec![0.0; 3 * 65];
        assert!(e(&wide).contains("at most 64 values each"));
        wide.embd = vec![0.0; 7];
        assert!(e(&wide).contains("7 input values"));
        wide.embd = vec![0.0; 3 * 64];
        assert!(l.check(&wide, 10).is_ok());
    }
}
