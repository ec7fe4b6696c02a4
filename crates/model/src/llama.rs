//! Llama (SmolLM2 and every `llama` GGUF): pre-norm blocks, RoPE on adjacent pairs, grouped
//! query attention, SiLU-gated FFN. Qwen2 and Qwen3 run this same forward pass.

use runtime::{Ops, RopeMode};

use crate::{blocks, Loader, Model, ModelError, Parts};

/// Loads a `llama` model.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    blocks::load_uniform(ld, "llama", RopeMode::Normal)
}

/// The forward pass: embeddings, then per block `x += attn(norm(x))`, `x += ffn(norm(x))`,
/// then the final norm and LM head. Q/K/V biases and Q/K norms apply when loaded. Only the
/// blocks of `layers` run; the embeddings with the first block, the head with the last.
pub fn forward<O: Ops>(m: &Model, o: &O, layers: std::ops::Range<usize>) {
    let (a, hp) = (&m.acts, &m.hp);
    let n = o.batch().len();
    if layers.start == 0 {
        o.embed(&m.tok_embd, a.x);
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
        o.add(n, a.x, a.out, a.x);
        o.rms_norm(n, a.x, Some(&l.ffn_norm), hp.eps, hp.n_embd, a.xn);
        blocks::ffn(m, o, il, false);
        o.add(n, a.x, a.out, a.x);
    }
    if layers.end >= m.layers.len() {
        blocks::output(m, o);
    }
}
