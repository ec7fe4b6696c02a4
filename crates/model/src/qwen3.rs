//! Qwen3 (dense): llama's blocks ([`crate::llama::uniform`]) with per-head RMSNorm of
//! queries and keys before NeoX RoPE, and no biases.

use runtime::RopeMode;

use crate::{llama, Loader, ModelError, Parts};

/// Loads a `qwen3` model; its Q/K norms are required.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let parts = llama::uniform(ld, "qwen3", RopeMode::Neox)?;
    let normed = |a: &crate::AttentionMixer| a.q_norm.is_some() && a.k_norm.is_some();
    parts.require(
        |b| b.attention().is_some_and(normed),
        "attn_q_norm.weight (or k)",
    )
}
