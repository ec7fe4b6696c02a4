//! The activation buffers of a forward pass, declared once at load in the runtime's `Plan`:
//! the ones every model uses, and those only some blocks' mixers, the hidden state or MTP need.

use runtime::{Act, DeltaNet, Plan};

use crate::Hparams;

/// The activation buffers of a forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Acts {
    /// The residual stream.
    pub x: Act,
    /// Normalized input of a sub-block.
    pub xn: Act,
    /// Queries.
    pub q: Act,
    /// Keys.
    pub k: Act,
    /// Values.
    pub v: Act,
    /// Attention output (all heads).
    pub attn: Act,
    /// Output of a sub-block, before the residual add.
    pub out: Act,
    /// FFN gate (then the gated product).
    pub gate: Act,
    /// FFN up projection.
    pub up: Act,
    /// Final hidden states of the tokens whose logits are wanted.
    pub last: Act,
    /// Logits.
    pub logits: Act,
    /// Buffers of gated attention, when a block has it.
    pub gated: Option<GatedActs>,
    /// Buffers of Gated DeltaNet, when a block has it.
    pub delta: Option<DeltaActs>,
    /// The final normed hidden state of every token of the batch, when the model keeps it
    /// (the input of its MTP blocks); the logits are then `hidden · output`.
    pub hidden: Option<Act>,
    /// Buffers of an MTP pass, when the model has MTP blocks.
    pub mtp: Option<MtpActs>,
}

/// Buffers of gated attention.
#[derive(Clone, Copy, Debug)]
pub struct GatedActs {
    /// Query projection: per head the query, then the gate.
    pub q_gate: Act,
    /// The output gate, one head after the other.
    pub attn_gate: Act,
}

/// Buffers of Gated DeltaNet.
#[derive(Clone, Copy, Debug)]
pub struct DeltaActs {
    /// `[q; k; v]` before the convolution.
    pub qkv: Act,
    /// `[q; k; v]` after the convolution and SiLU.
    pub conv: Act,
    /// The output gate z.
    pub z: Act,
    /// Per value head: α, then g in place.
    pub alpha: Act,
    /// Per value head: β.
    pub beta: Act,
    /// The delta rule's output, then gated-normed in place.
    pub delta: Act,
}

/// Buffers of an MTP pass.
#[derive(Clone, Copy, Debug)]
pub struct MtpActs {
    /// Input: the hidden state of the position before each token (written by the caller
    /// before an MTP pass).
    pub h_in: Act,
    /// `rms(embed(x))·enorm`.
    pub e: Act,
    /// `[e; rms(h_in)·hnorm]`.
    pub cat: Act,
    /// Output: `rms(y)·shared_head_norm` of every token (the next draft step's `h_in`).
    pub h: Act,
    /// Output states of the tokens in `batch.logits`.
    pub last: Act,
    /// MTP logits of the tokens in `batch.logits` (the trunk's stay in `Acts::logits`).
    pub logits: Act,
}

/// What a model needs beyond the buffers every model uses.
pub(crate) struct Needs {
    /// Some block has gated attention.
    pub gated: bool,
    /// Some block has Gated DeltaNet, of this shape.
    pub delta: Option<DeltaNet>,
    /// The model keeps the final hidden state of every token.
    pub hidden: bool,
    /// The model has MTP blocks.
    pub mtp: bool,
}

impl Acts {
    /// Declares the buffers in `plan`: those the model needs, then the common ones.
    pub(crate) fn declare(plan: &mut Plan, hp: &Hparams, needs: &Needs, rows: usize) -> Acts {
        let q_dim = hp.n_head * hp.head_dim;
        let d = hp.n_embd;
        let gated = needs.gated.then(|| GatedActs {
            q_gate: plan.act(2 * q_dim),
            attn_gate: plan.act(q_dim),
        });
        let delta = needs.delta.as_ref().map(|net| DeltaActs {
            qkv: plan.act(net.conv_channels()),
            conv: plan.act(net.conv_channels()),
            z: plan.act(net.value_dim()),
            alpha: plan.act(net.n_v_heads),
            beta: plan.act(net.n_v_heads),
            delta: plan.act(net.value_dim()),
        });
        let hidden = needs.hidden.then(|| plan.act(d));
        let mtp = needs.mtp.then(|| MtpActs {
            h_in: plan.act(d),
            e: plan.act(d),
            cat: plan.act(2 * d),
            h: plan.act(d),
            last: plan.act_rows(d, rows),
            logits: plan.act_rows(hp.n_vocab, rows),
        });
        Acts {
            x: plan.act(d),
            xn: plan.act(d),
            q: plan.act(q_dim),
            k: plan.act(hp.kv_dim()),
            v: plan.act(hp.kv_dim()),
            attn: plan.act(q_dim),
            out: plan.act(d),
            gate: plan.act(hp.n_ff),
            up: plan.act(hp.n_ff),
            last: plan.act_rows(d, rows),
            logits: plan.act_rows(hp.n_vocab, rows),
            gated,
            delta,
            hidden,
            mtp,
        }
    }
}
