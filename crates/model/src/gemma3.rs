//! Gemma 3: embeddings scaled by √n_embd, per-head Q/K RMSNorm, NeoX RoPE with a local base
//! on sliding-window layers and a global one on every sixth, RMSNorm after the attention and
//! after the GELU-gated FFN, tied LM head. The GGUF's norm weights already include the "+1".

use runtime::{Attention, Ops, Rope, RopeMode};

use crate::hparams::Keys;
use crate::{blocks, Hparams, Loader, Model, ModelError, Parts};

/// Every `SWA_PATTERN`-th layer attends globally; the others see a sliding window.
const SWA_PATTERN: usize = 6;
/// RoPE base of the sliding-window layers when the file does not say.
const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Loads a `gemma3` model.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let m = ld.metadata();
    let n_vocab = m.get_array("tokenizer.ggml.tokens").map_or(0, |a| a.len());
    let hp = Hparams::read(m, "gemma3", n_vocab)?;
    let k = Keys::new(m, "gemma3");
    let local_base = k.f32_or("rope.freq_base_swa", LOCAL_ROPE_BASE)?;
    let window = hp.sliding_window;
    let scale = 1.0 / (hp.head_dim as f32).sqrt();
    let layers = (0..hp.n_layer)
        .map(|il| {
            let global = (il + 1) % SWA_PATTERN == 0 || window.is_none();
            let (base, freq_scale) = if global {
                (hp.rope_base, hp.rope_freq_scale)
            } else {
                (local_base, 1.0)
            };
            let rope = Rope::new(RopeMode::Neox, hp.n_rot, base, freq_scale);
            let attn = Attention {
                n_heads: hp.n_head,
                n_kv_heads: hp.n_head_kv,
                head_dim: hp.head_dim,
                scale,
                window: if global { None } else { window },
                softcap: None,
            };
            let l = blocks::load_layer(ld, &hp, il, rope, attn)?;
            for (part, present) in [
                ("attn_q_norm", l.q_norm.is_some()),
                ("attn_k_norm", l.k_norm.is_some()),
                ("post_attention_norm", l.post_attn_norm.is_some()),
                ("post_ffw_norm", l.post_ffn_norm.is_some()),
            ] {
                if !present {
                    return Err(ModelError::MissingTensor(format!("blk.{il}.{part}.weight")));
                }
            }
            Ok(l)
        })
        .collect::<Result<_, _>>()?;
    let (tok_embd, output_norm, output) = blocks::load_ends(ld, &hp)?;
    let embd_scale = Some((hp.n_embd as f32).sqrt());
    let final_softcap = Some(k.f32_or("final_logit_softcapping", 0.0)?).filter(|&c| c > 0.0);
    Ok(Parts {
        hp,
        tok_embd,
        output_norm,
        output,
        layers,
        embd_scale,
        final_softcap,
        hybrid: None,
    })
}

/// The forward pass: `x = embed × √d` (given input rows unscaled); per block `x += norm(attn(norm(x)))` and
/// `x += norm(ffn(norm(x)))`; then the final norm and the tied LM head. Only the blocks of
/// `layers` run; the embeddings with the first block, the head with the last.
pub fn forward<O: Ops>(m: &Model, o: &O, layers: std::ops::Range<usize>) {
    let (a, hp) = (&m.acts, &m.hp);
    let n = o.batch().len();
    if layers.start == 0 {
        o.embed(&m.tok_embd, a.x);
        // Input rows given directly (image embeddings) are not scaled.
        if let Some(s) = m.embd_scale.filter(|_| o.batch().embd.is_empty()) {
            o.scale(n, a.x, s);
        }
    }
    for (il, l) in m
        .layers
        .iter()
        .enumerate()
        .take(layers.end)
        .skip(layers.start)
    {
        o.rms_norm(n, a.x, Some(&l.attn_norm), hp.eps, hp.n_embd, a.xn);
        blocks::attention(m, o, il);
        if let Some(w) = &l.post_attn_norm {
            o.rms_norm(n, a.out, Some(w), hp.eps, hp.n_embd, a.out);
        }
        o.add(n, a.x, a.out, a.x);
        o.rms_norm(n, a.x, Some(&l.ffn_norm), hp.eps, hp.n_embd, a.xn);
        blocks::ffn(m, o, il, true);
        if let Some(w) = &l.post_ffn_norm {
            o.rms_norm(n, a.out, Some(w), hp.eps, hp.n_embd, a.out);
        }
        o.add(n, a.x, a.out, a.x);
    }
    if layers.end >= m.layers.len() {
        blocks::output(m, o);
    }
}
