//! Qwen2 / Qwen2.5: the llama forward pass ([`crate::llama::forward`]) with biases on the
//! Q, K and V projections and NeoX RoPE (rotating halves, not adjacent pairs).

use runtime::RopeMode;

use crate::{blocks, Loader, ModelError, Parts};

/// Loads a `qwen2` model; its Q/K/V biases are required.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let parts = blocks::load_uniform(ld, "qwen2", RopeMode::Neox)?;
    if let Some(il) = parts
        .layers
        .iter()
        .position(|l| l.bq.is_none() || l.bk.is_none() || l.bv.is_none())
    {
        return Err(ModelError::MissingTensor(format!(
            "blk.{il}.attn_q.bias (or k/v)"
        )));
    }
    Ok(parts)
}
