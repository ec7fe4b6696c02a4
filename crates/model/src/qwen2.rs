//! Qwen2 / Qwen2.5: llama's blocks ([`crate::llama::uniform`]) with biases on the Q, K and V
//! projections and NeoX RoPE (rotating halves, not adjacent pairs).

use runtime::RopeMode;

use crate::{llama, Loader, ModelError, Parts};

/// Loads a `qwen2` model; its Q/K/V biases are required.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let parts = llama::uniform(ld, "qwen2", RopeMode::Neox)?;
    let biased = |a: &crate::AttentionMixer| a.bq.is_some() && a.bk.is_some() && a.bv.is_some();
    parts.require(
        |b| b.attention().is_some_and(biased),
        "attn_q.bias (or k/v)",
    )
}
