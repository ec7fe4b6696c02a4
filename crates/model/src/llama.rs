//! Llama (SmolLM2 and every `llama` GGUF): pre-norm blocks, RoPE on adjacent pairs, grouped
//! query attention, SiLU-gated FFN. Qwen2 and Qwen3 are built the same way ([`uniform`]).

use runtime::{Rope, RopeMode};

use crate::{Activation, Block, Hparams, Loader, ModelError, Parts};

/// Loads a `llama` model.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    uniform(ld, "llama", RopeMode::Normal)
}

/// A model whose blocks are all standard ones with the same RoPE and attention: per block
/// `x += attn(norm(x))`, `x += ffn(norm(x))`, with the Q/K/V biases and Q/K norms the file
/// has; then the final norm and the LM head.
pub(crate) fn uniform(ld: &Loader, arch: &str, mode: RopeMode) -> Result<Parts, ModelError> {
    let hp = Hparams::read(ld.metadata(), arch)?;
    let rope = Rope::new(mode, hp.n_rot, hp.rope_base, hp.rope_freq_scale);
    let attn = hp.attention(None);
    let blocks = (0..hp.n_layer)
        .map(|il| Block::standard(ld, &hp, il, rope.clone(), attn.clone(), Activation::Silu))
        .collect::<Result<_, _>>()?;
    Parts::new(ld, hp, blocks)
}
