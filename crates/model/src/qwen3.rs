//! Qwen3 (dense): the llama forward pass ([`crate::llama::forward`]) with per-head RMSNorm
//! of queries and keys before NeoX RoPE, and no biases.

use runtime::RopeMode;

use crate::{blocks, Loader, ModelError, Parts};

/// Loads a `qwen3` model; its Q/K norms are required.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let parts = blocks::load_uniform(ld, "qwen3", RopeMode::Neox)?;
    if let Some(il) = parts
        .layers
        .iter()
        .position(|l| l.q_norm.is_none() || l.k_norm.is_none())
    {
        return Err(ModelError::MissingTensor(format!(
            "blk.{il}.attn_q_norm.weight (or k)"
        )));
    }
    Ok(parts)
}
