//! The token mixers a block starts with: attention over the KV cache (plain or gated) and
//! Gated DeltaNet over a recurrent state; each loads its own weights and runs over `Ops`.

use runtime::{Attention, DeltaNet, Ops, Rope, Weight};

use crate::{Hparams, Loader, Model, ModelError};

/// What mixes information across positions in a block.
pub enum Mixer {
    /// Attention with its layer of the KV cache.
    Attention(AttentionMixer),
    /// Gated DeltaNet with its layer of the recurrent state.
    DeltaNet(DeltaNetMixer),
}

/// Attention: projections, optional Q/K/V biases and per-head Q/K norms, RoPE, and for the
/// gated kind an output gate per head.
pub struct AttentionMixer {
    /// Query projection; when `gated`, per head the query then the output gate.
    pub wq: Weight,
    /// Key projection.
    pub wk: Weight,
    /// Value projection.
    pub wv: Weight,
    /// Output projection.
    pub wo: Weight,
    /// Query bias (Qwen2).
    pub bq: Option<Vec<f32>>,
    /// Key bias (Qwen2).
    pub bk: Option<Vec<f32>>,
    /// Value bias (Qwen2).
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries before RoPE (Qwen3, Gemma 3, Qwen3.5).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm of keys before RoPE.
    pub k_norm: Option<Vec<f32>>,
    /// Whether the output is gated by `sigmoid(gate)` (Qwen3.5).
    pub gated: bool,
    /// This layer's RoPE (Gemma 3's local and global layers differ).
    pub rope: Rope,
    /// This layer's attention shape, scale and window.
    pub attn: Attention,
    /// Its layer of the KV cache.
    pub kv: usize,
}

/// Gated DeltaNet: `[q; k; v] = W_qkv·u` through a causal depthwise convolution and SiLU,
/// the delta rule per value head, then a gated RMSNorm and the output projection.
pub struct DeltaNetMixer {
    /// `[q; k; v]` projection (conv channels × n_embd).
    pub qkv: Weight,
    /// Output gate z (value heads × head_v).
    pub z: Weight,
    /// Convolution taps, `conv_kernel` per channel, oldest first.
    pub conv: Vec<f32>,
    /// Per value head.
    pub dt_bias: Vec<f32>,
    /// Per value head: −exp(A_log), negative.
    pub a: Vec<f32>,
    /// β projection (one per value head).
    pub beta: Weight,
    /// α projection (one per value head).
    pub alpha: Weight,
    /// Gated RMSNorm weight, per head (head_v values).
    pub norm: Vec<f32>,
    /// Output projection.
    pub out: Weight,
    /// The shape of the mixer and its state.
    pub net: DeltaNet,
    /// Its layer of the recurrent state.
    pub rs: usize,
}

impl Mixer {
    /// Runs the mixer on `acts.xn` into `acts.out`.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        match self {
            Mixer::Attention(a) => a.forward(m, o),
            Mixer::DeltaNet(d) => d.forward(m, o),
        }
    }

    /// Parameter count of the matrices (and convolution taps).
    pub(crate) fn n_params(&self) -> usize {
        let w = |w: &Weight| w.rows * w.cols;
        match self {
            Mixer::Attention(l) => w(&l.wq) + w(&l.wk) + w(&l.wv) + w(&l.wo),
            Mixer::DeltaNet(l) => {
                w(&l.qkv) + w(&l.z) + w(&l.beta) + w(&l.alpha) + w(&l.out) + l.conv.len()
            }
        }
    }
}

impl AttentionMixer {
    /// Loads the attention tensors under prefix `p` (`blk.N`), named as llama.cpp's
    /// converter names them: the projections, and the biases (not when `gated`) and Q/K norms
    /// the file has.
    pub(crate) fn load(
        ld: &Loader,
        hp: &Hparams,
        p: &str,
        gated: bool,
        rope: Rope,
        attn: Attention,
        kv: usize,
    ) -> Result<AttentionMixer, ModelError> {
        let t = |s: &str| format!("{p}.{s}");
        let (d, q, kv_dim) = (hp.n_embd, hp.n_head * hp.head_dim, hp.kv_dim());
        let bias = |s: &str, n| match gated {
            true => Ok(None),
            false => ld.optional_vector(&t(s), n),
        };
        Ok(AttentionMixer {
            wq: ld.matrix(&t("attn_q.weight"), d, if gated { 2 * q } else { q })?,
            wk: ld.matrix(&t("attn_k.weight"), d, kv_dim)?,
            wv: ld.matrix(&t("attn_v.weight"), d, kv_dim)?,
            wo: ld.matrix(&t("attn_output.weight"), q, d)?,
            bq: bias("attn_q.bias", q)?,
            bk: bias("attn_k.bias", kv_dim)?,
            bv: bias("attn_v.bias", kv_dim)?,
            q_norm: ld.optional_vector(&t("attn_q_norm.weight"), hp.head_dim)?,
            k_norm: ld.optional_vector(&t("attn_k_norm.weight"), hp.head_dim)?,
            gated,
            rope,
            attn,
            kv,
        })
    }

    /// `acts.out = Wo · attention(rope(norm(Wq·xn + bq)), ...)`, times `sigmoid(gate)` per
    /// head before `Wo` when gated.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        let (a, l, hp) = (&m.acts, self, &m.hp);
        let n = o.batch().len();
        let gate = l
            .gated
            .then(|| a.gated.expect("gated buffers are declared at load"));
        o.matmul(n, &l.wq, a.xn, gate.map_or(a.q, |g| g.q_gate));
        o.matmul(n, &l.wk, a.xn, a.k);
        o.matmul(n, &l.wv, a.xn, a.v);
        if let Some(g) = gate {
            o.unzip(n, g.q_gate, hp.head_dim, a.q, g.attn_gate);
        }
        for (b, act) in [(&l.bq, a.q), (&l.bk, a.k), (&l.bv, a.v)] {
            if let Some(b) = b {
                o.add_bias(n, act, b);
            }
        }
        for (w, act) in [(&l.q_norm, a.q), (&l.k_norm, a.k)] {
            if let Some(w) = w {
                o.rms_norm(n, act, Some(w), hp.eps, hp.head_dim, act);
            }
        }
        o.rope(a.q, hp.n_head, hp.head_dim, &l.rope);
        o.rope(a.k, hp.n_head_kv, hp.head_dim, &l.rope);
        o.attention(l.kv, a.q, a.k, a.v, &l.attn, a.attn);
        if let Some(g) = gate {
            o.sigmoid_mul(n, a.attn, g.attn_gate, a.attn);
        }
        o.matmul(n, &l.wo, a.attn, a.out);
    }
}

impl DeltaNetMixer {
    /// Loads the Gated DeltaNet tensors of block `p` (`blk.N`) for the shape `net`.
    pub(crate) fn load(
        ld: &Loader,
        hp: &Hparams,
        p: &str,
        net: &DeltaNet,
        rs: usize,
    ) -> Result<DeltaNetMixer, ModelError> {
        let t = |s: &str| format!("{p}.{s}");
        let (d, nv) = (hp.n_embd, net.n_v_heads);
        let (ch, vd) = (net.conv_channels(), net.value_dim());
        Ok(DeltaNetMixer {
            qkv: ld.matrix(&t("attn_qkv.weight"), d, ch)?,
            z: ld.matrix(&t("attn_gate.weight"), d, vd)?,
            conv: ld.values(
                &t("ssm_conv1d.weight"),
                &[net.conv_kernel as u64, ch as u64],
            )?,
            dt_bias: ld.vector(&t("ssm_dt.bias"), nv)?,
            a: ld.vector(&t("ssm_a"), nv)?,
            beta: ld.matrix(&t("ssm_beta.weight"), d, nv)?,
            alpha: ld.matrix(&t("ssm_alpha.weight"), d, nv)?,
            norm: ld.vector(&t("ssm_norm.weight"), net.head_v)?,
            out: ld.matrix(&t("ssm_out.weight"), vd, d)?,
            net: net.clone(),
            rs,
        })
    }

    /// The Gated DeltaNet of recurrent layer `rs`, reading `acts.xn`, into `acts.out`.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        let (a, l, net) = (&m.acts, self, &self.net);
        let b = a.delta.expect("DeltaNet buffers are declared at load");
        let n = o.batch().len();
        o.matmul(n, &l.qkv, a.xn, b.qkv);
        o.matmul(n, &l.z, a.xn, b.z);
        o.matmul(n, &l.beta, a.xn, b.beta);
        o.matmul(n, &l.alpha, a.xn, b.alpha);
        o.delta_gates(n, b.alpha, b.beta, &l.dt_bias, &l.a);
        o.conv_silu(l.rs, b.qkv, &l.conv, net, b.conv);
        o.gated_delta(l.rs, b.conv, b.alpha, b.beta, net, b.delta);
        o.gated_rms_norm(n, b.delta, b.z, &l.norm, m.hp.eps, b.delta);
        o.matmul(n, &l.out, b.delta, a.out);
    }
}
