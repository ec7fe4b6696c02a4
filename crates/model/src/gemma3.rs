//! Gemma 3: embeddings scaled by √n_embd, per-head Q/K RMSNorm, NeoX RoPE with a local base
//! on sliding-window layers and a global one on every sixth, RMSNorm after the attention and
//! after the GELU-gated FFN, tied LM head. The GGUF's norm weights already include the "+1".

use runtime::{Rope, RopeMode};

use crate::hparams::Keys;
use crate::{Activation, AttentionMixer, Block, Hparams, Loader, ModelError, Parts};

/// Every `SWA_PATTERN`-th layer attends globally; the others see a sliding window.
const SWA_PATTERN: usize = 6;
/// RoPE base of the sliding-window layers when the file does not say.
const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Loads a `gemma3` model: standard blocks whose Q/K norms and post-norms are required.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let m = ld.metadata();
    let hp = Hparams::read(m, "gemma3")?;
    let k = Keys::new(m, "gemma3");
    let local_base = k.f32_or("rope.freq_base_swa", LOCAL_ROPE_BASE)?;
    let window = hp.sliding_window;
    let blocks = (0..hp.n_layer)
        .map(|il| {
            let global = (il + 1) % SWA_PATTERN == 0 || window.is_none();
            let (base, freq_scale) = if global {
                (hp.rope_base, hp.rope_freq_scale)
            } else {
                (local_base, 1.0)
            };
            let rope = Rope::new(RopeMode::Neox, hp.n_rot, base, freq_scale);
            let attn = hp.attention(if global { None } else { window });
            Block::standard(ld, &hp, il, rope, attn, Activation::Gelu)
        })
        .collect::<Result<_, _>>()?;
    let mut parts = Parts::new(ld, hp, blocks)?;
    parts.embd_scale = Some((parts.hp.n_embd as f32).sqrt());
    parts.final_softcap = Some(k.f32_or("final_logit_softcapping", 0.0)?).filter(|&c| c > 0.0);
    let attn = |b: &Block, has: fn(&AttentionMixer) -> bool| b.attention().is_some_and(has);
    parts
        .require(|b| attn(b, |a| a.q_norm.is_some()), "attn_q_norm.weight")?
        .require(|b| attn(b, |a| a.k_norm.is_some()), "attn_k_norm.weight")?
        .require(|b| b.post_mix_norm.is_some(), "post_attention_norm.weight")?
        .require(|b| b.post_ffn_norm.is_some(), "post_ffw_norm.weight")
}
