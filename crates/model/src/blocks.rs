//! The blocks every family is a list of (a mixer and a gated FFN, each with its norms), the
//! standard block's builder, and the forward pass over them: embeddings, blocks, head.

use runtime::{Attention, Ops, Rope, Weight};

use crate::mixer::{AttentionMixer, DeltaNetMixer, Mixer};
use crate::{Hparams, Loader, Model, ModelError};

/// One block: `x += post_mix_norm(mixer(norm(x)))`, then `x += post_ffn_norm(ffn(norm(x)))`.
pub struct Block {
    /// RMSNorm weight of the mixer's input.
    pub attn_norm: Vec<f32>,
    /// Attention or DeltaNet.
    pub mixer: Mixer,
    /// RMSNorm of the mixer's output before the residual add (Gemma 3).
    pub post_mix_norm: Option<Vec<f32>>,
    /// RMSNorm weight of the FFN's input.
    pub ffn_norm: Vec<f32>,
    /// The gated feed-forward network.
    pub ffn: Ffn,
    /// RMSNorm of the FFN output before the residual add (Gemma 3).
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// The activation of a gated FFN's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU).
    Silu,
    /// GELU (GeGLU, Gemma).
    Gelu,
}

/// Gated FFN: `down(act(gate·x) × up·x)`.
pub struct Ffn {
    /// Gate projection.
    pub gate: Weight,
    /// Up projection.
    pub up: Weight,
    /// Down projection.
    pub down: Weight,
    /// The gate's activation.
    pub act: Activation,
}

impl Ffn {
    /// Loads `{p}.ffn_gate`, `ffn_up` and `ffn_down`.
    pub(crate) fn load(
        ld: &Loader,
        hp: &Hparams,
        p: &str,
        act: Activation,
    ) -> Result<Ffn, ModelError> {
        let (d, ff) = (hp.n_embd, hp.n_ff);
        Ok(Ffn {
            gate: ld.matrix(&format!("{p}.ffn_gate.weight"), d, ff)?,
            up: ld.matrix(&format!("{p}.ffn_up.weight"), d, ff)?,
            down: ld.matrix(&format!("{p}.ffn_down.weight"), ff, d)?,
            act,
        })
    }

    /// `acts.out = down(act(gate·xn) × up·xn)`.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        let a = &m.acts;
        let n = o.batch().len();
        o.matmul(n, &self.gate, a.xn, a.gate);
        o.matmul(n, &self.up, a.xn, a.up);
        match self.act {
            Activation::Gelu => o.geglu(n, a.gate, a.up, a.gate),
            Activation::Silu => o.swiglu(n, a.gate, a.up, a.gate),
        }
        o.matmul(n, &self.down, a.gate, a.out);
    }
}

impl Block {
    /// The standard block `il` (llama, qwen2, qwen3, gemma3): attention with KV layer `il`,
    /// `ffn_norm` before the FFN, and the post-norms the file has.
    pub(crate) fn standard(
        ld: &Loader,
        hp: &Hparams,
        il: usize,
        rope: Rope,
        attn: Attention,
        act: Activation,
    ) -> Result<Block, ModelError> {
        let p = format!("blk.{il}");
        let t = |s: &str| format!("{p}.{s}");
        let d = hp.n_embd;
        Ok(Block {
            attn_norm: ld.vector(&t("attn_norm.weight"), d)?,
            mixer: Mixer::Attention(AttentionMixer::load(ld, hp, &p, false, rope, attn, il)?),
            post_mix_norm: ld.optional_vector(&t("post_attention_norm.weight"), d)?,
            ffn_norm: ld.vector(&t("ffn_norm.weight"), d)?,
            ffn: Ffn::load(ld, hp, &p, act)?,
            post_ffn_norm: ld.optional_vector(&t("post_ffw_norm.weight"), d)?,
        })
    }

    /// The attention mixer, if that is what the block has.
    pub fn attention(&self) -> Option<&AttentionMixer> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::DeltaNet(_) => None,
        }
    }

    /// The DeltaNet mixer, if that is what the block has.
    pub fn delta_net(&self) -> Option<&DeltaNetMixer> {
        match &self.mixer {
            Mixer::DeltaNet(d) => Some(d),
            Mixer::Attention(_) => None,
        }
    }

    /// Runs the block on the residual stream `acts.x`.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        let (a, hp) = (&m.acts, &m.hp);
        let n = o.batch().len();
        o.rms_norm(n, a.x, Some(&self.attn_norm), hp.eps, hp.n_embd, a.xn);
        self.mixer.forward(m, o);
        if let Some(w) = &self.post_mix_norm {
            o.rms_norm(n, a.out, Some(w), hp.eps, hp.n_embd, a.out);
        }
        o.add(n, a.x, a.out, a.x);
        o.rms_norm(n, a.x, Some(&self.ffn_norm), hp.eps, hp.n_embd, a.xn);
        self.ffn.forward(m, o);
        if let Some(w) = &self.post_ffn_norm {
            o.rms_norm(n, a.out, Some(w), hp.eps, hp.n_embd, a.out);
        }
        o.add(n, a.x, a.out, a.x);
    }

    /// Parameter count of the matrices (and convolution taps).
    pub(crate) fn n_params(&self) -> usize {
        let w = |w: &Weight| w.rows * w.cols;
        self.mixer.n_params() + w(&self.ffn.gate) + w(&self.ffn.up) + w(&self.ffn.down)
    }
}

/// The embedding matrix, the final norm and the LM head (tied to the embeddings when the
/// file has no `output.weight`).
pub(crate) fn load_ends(
    ld: &Loader,
    hp: &Hparams,
) -> Result<(Weight, Vec<f32>, Weight), ModelError> {
    let tok_embd = ld.matrix("token_embd.weight", hp.n_embd, hp.n_vocab)?;
    let output_norm = ld.vector("output_norm.weight", hp.n_embd)?;
    let output = if ld.has("output.weight") {
        ld.matrix("output.weight", hp.n_embd, hp.n_vocab)?
    } else {
        tok_embd.clone()
    };
    Ok((tok_embd, output_norm, output))
}

/// The forward pass of blocks `layers`: the embeddings (times `embd_scale`, unless the
/// batch gives input rows) when it starts at 0, and the head when it reaches the last block.
pub(crate) fn forward<O: Ops>(m: &Model, o: &O, layers: std::ops::Range<usize>) {
    let a = &m.acts;
    let n = o.batch().len();
    if layers.start == 0 {
        o.embed(&m.tok_embd, a.x);
        // Input rows given directly (image embeddings) are not scaled.
        if let Some(s) = m.embd_scale.filter(|_| o.batch().embd.is_empty()) {
            o.scale(n, a.x, s);
        }
    }
    for block in m.blocks.iter().take(layers.end).skip(layers.start) {
        block.forward(m, o);
    }
    if layers.end >= m.blocks.len() {
        head(m, o);
    }
}

/// Final norm and LM head for the tokens that want logits. When the model keeps the hidden
/// state (`acts.hidden`), every token's normed state lands there and the head reads it.
fn head<O: Ops>(m: &Model, o: &O) {
    let (a, hp) = (&m.acts, &m.hp);
    let nl = o.batch().logits.len();
    if let Some(h) = a.hidden {
        let n = o.batch().len();
        o.rms_norm(n, a.x, Some(&m.output_norm), hp.eps, hp.n_embd, h);
        if nl > 0 {
            o.gather_logit_rows(h, a.last);
        }
    } else if nl > 0 {
        o.gather_logit_rows(a.x, a.last);
        o.rms_norm(nl, a.last, Some(&m.output_norm), hp.eps, hp.n_embd, a.last);
    }
    if nl == 0 {
        return;
    }
    o.matmul(nl, &m.output, a.last, a.logits);
    if let Some(cap) = m.final_softcap {
        o.softcap(nl, a.logits, cap);
    }
}
