//! Qwen3.5 / Qwen3.6 dense (GGUF architecture `qwen35`): a hybrid of Gated DeltaNet layers
//! (linear attention with a recurrent state) and gated full-attention layers, every
//! `full_attention_interval`-th layer (or as `attention.recurrent_layers` says), each followed
//! by a SwiGLU FFN; tied or separate LM head. The file may also hold multi-token-prediction
//! ("nextn") blocks after the trunk; they are loaded into [`Mtp`] but not run by
//! [`forward`].
//!
//! Per layer: `x += mixer(rms(x)·attn_norm)`, then `x += ffn(rms(x)·post_attention_norm)`.
//!
//! - Gated attention: the query projection yields, per head, the query then an output gate;
//!   per-head RMSNorm of q and k, NeoX RoPE on the first `n_rot` dims with the multi-section
//!   layout (for text every position component is the token position, so a pair rotates by
//!   the position when a section covers it, and not at all otherwise), GQA, then
//!   `attn · sigmoid(gate)` and the output projection.
//! - Gated DeltaNet: `[q; k; v] = W_qkv·u` through a causal depthwise convolution and SiLU;
//!   q, k L2-normalized per head; `β = sigmoid(W_β·u)`, `g = softplus(W_α·u + dt_bias)·a`; the
//!   delta rule per value head (value head j reads key head j mod n_k); then
//!   `rms(o)·ssm_norm ⊙ silu(W_z·u)` per head and `ssm_out`.

use gguf::Array;
use runtime::{Act, Attention, DeltaNet, Ops, Plan, Rope, RopeMode, Weight};

use crate::hparams::Keys;
use crate::{Hparams, Layer, Loader, Model, ModelError, Parts};

/// Every `DEFAULT_INTERVAL`-th layer is full attention when the file does not say.
const DEFAULT_INTERVAL: usize = 4;

/// The weights of a Gated DeltaNet block (mixer and FFN).
pub struct DeltaNetLayer {
    pub attn_norm: Vec<f32>,
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
    pub beta: Weight,
    pub alpha: Weight,
    /// Gated RMSNorm weight, per head (head_v values).
    pub norm: Vec<f32>,
    pub out: Weight,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// One block of the trunk.
pub enum Block {
    /// Gated full attention; `kv` is its layer of the KV cache. `layer.wq` yields the query
    /// and the gate of every head; `layer.ffn_norm` is the post-attention norm.
    Attention { layer: Layer, kv: usize },
    /// Gated DeltaNet; `rs` is its layer of the recurrent state.
    DeltaNet { layer: DeltaNetLayer, rs: usize },
}

/// A multi-token-prediction block: at position p it takes the token `x_p` and the trunk's
/// final normed hidden state `h` of position p − 1 (zeros at 0) and predicts `x_{p+1}`:
/// `y = eh_proj·[rms(embed(x_p))·enorm; rms(h)·hnorm]`, then one gated full-attention
/// decoder block (`block`, with its own KV-cache layer `kv`, same positions and RoPE), then
/// `rms(y)·shared_head_norm` and the LM head. Not run by [`forward`].
pub struct Mtp {
    pub block: Layer,
    /// Its layer of the KV cache (after the trunk's attention layers).
    pub kv: usize,
    /// `[2·n_embd → n_embd]`; input is [normed embedding; normed hidden].
    pub eh_proj: Weight,
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    /// Final norm of the block (the trunk's `output_norm` when the file has none).
    pub shared_head_norm: Vec<f32>,
    /// Own embeddings, when the file has them (else the trunk's `token_embd`).
    pub embed_tokens: Option<Weight>,
    /// Own LM head, when the file has it (else the trunk's).
    pub shared_head_head: Option<Weight>,
}

/// The activation buffers of the hybrid forward pass beyond [`crate::Acts`].
#[derive(Clone, Copy, Debug)]
pub struct HybridActs {
    /// Query projection of an attention layer: per head the query, then the gate.
    pub q_gate: Act,
    /// The attention output gate, one head after the other.
    pub attn_gate: Act,
    /// `[q; k; v]` before the convolution.
    pub qkv: Act,
    /// `[q; k; v]` after the convolution and SiLU.
    pub conv: Act,
    /// The DeltaNet output gate z.
    pub z: Act,
    /// Per value head: α, then g in place.
    pub alpha: Act,
    /// Per value head: β.
    pub beta: Act,
    /// The delta rule's output, then gated-normed in place.
    pub delta: Act,
    /// The trunk's final normed hidden state of every token of the batch (what the MTP
    /// block consumes); the logits are `h · output`.
    pub h: Act,
    /// MTP input: the hidden state `h` of the position before each token (written by the
    /// caller before an MTP pass).
    pub mtp_h_in: Act,
    /// MTP: `rms(embed(x))·enorm`, then `[that; rms(h_in)·hnorm]`.
    pub mtp_e: Act,
    pub mtp_cat: Act,
    /// MTP output: `rms(y)·shared_head_norm` of every token (the next draft step's `h`).
    pub mtp_h: Act,
    /// MTP logits of the tokens in `batch.logits` (the trunk's stay in `acts.logits`).
    pub mtp_last: Act,
    pub mtp_logits: Act,
}

/// What the hybrid family adds to [`Model`].
pub struct Hybrid {
    /// The trunk, in order.
    pub blocks: Vec<Block>,
    /// Multi-token-prediction blocks (`nextn_predict_layers`), in order.
    pub mtp: Vec<Mtp>,
    /// Shape of every DeltaNet mixer.
    pub net: DeltaNet,
    /// Recurrent layers of the trunk.
    pub n_recurrent: usize,
    /// Layers of the KV cache: the trunk's attention layers, then one per MTP block.
    pub n_kv: usize,
    pub acts: HybridActs,
}

impl Hybrid {
    /// Parameter count of the trunk's and MTP blocks' tensors.
    pub(crate) fn n_params(&self) -> usize {
        let w = |w: &Weight| w.rows * w.cols;
        let attn = |l: &Layer| {
            w(&l.wq) + w(&l.wk) + w(&l.wv) + w(&l.wo) + w(&l.gate) + w(&l.up) + w(&l.down)
        };
        let mut n = 0;
        for b in &self.blocks {
            n += match b {
                Block::Attention { layer, .. } => attn(layer),
                Block::DeltaNet { layer: l, .. } => {
                    w(&l.qkv)
                        + w(&l.z)
                        + w(&l.beta)
                        + w(&l.alpha)
                        + w(&l.out)
                        + l.conv.len()
                        + w(&l.gate)
                        + w(&l.up)
                        + w(&l.down)
                }
            };
        }
        for m in &self.mtp {
            n += attn(&m.block) + w(&m.eh_proj);
        }
        n
    }
}

/// Which trunk layers are recurrent: `attention.recurrent_layers` when present (one bool per
/// block, MTP blocks included), else every layer but each `full_attention_interval`-th.
fn recurrent_layers(
    ld: &Loader,
    arch: &str,
    n_trunk: usize,
) -> Result<impl Fn(usize) -> bool, ModelError> {
    let m = ld.metadata();
    let key = format!("{arch}.attention.recurrent_layers");
    let listed = match m.get_array(&key) {
        Some(Array::Bool(v)) if v.len() >= n_trunk => Some(v.clone()),
        Some(Array::Bool(v)) => {
            return Err(ModelError::BadMetadata(
                key,
                format!("{} entries for {n_trunk} layers", v.len()),
            ))
        }
        Some(_) => return Err(ModelError::BadMetadata(key, "not an array of bools".into())),
        None => None,
    };
    let interval = Keys::new(m, arch).usize_or("full_attention_interval", DEFAULT_INTERVAL)?;
    Ok(move |il: usize| match &listed {
        Some(v) => v[il],
        None => !(il + 1).is_multiple_of(interval),
    })
}

/// RoPE on the first `n_rot` dims in NeoX pairing, with the multi-section layout of
/// `rope.dimension_sections`: pair i falls in sector `i mod Σsections`; the first three
/// sections (interleaved: sector s belongs to section s mod 3 while s < 3 × that section's
/// size) rotate by the position's t, h or w component (all equal for text; an image's rows
/// differ, see [`runtime::Batch::rope_pos`]), anything else by the fourth component, which
/// is always 0 here: those pairs do not rotate.
fn rope(ld: &Loader, arch: &str, hp: &Hparams) -> Result<Rope, ModelError> {
    let mut rope = Rope::new(RopeMode::Neox, hp.n_rot, hp.rope_base, hp.rope_freq_scale);
    let key = format!("{arch}.rope.dimension_sections");
    let Some(arr) = ld.metadata().get_array(&key) else {
        return Ok(rope);
    };
    let s: Vec<usize> = (0..4)
        .map(|i| arr.get(i).and_then(|v| v.as_i64()).filter(|&x| x >= 0))
        .map(|x| x.map(|x| x as usize).unwrap_or(0))
        .collect();
    let total: usize = s.iter().sum();
    if total == 0 {
        return Ok(rope);
    }
    rope.section = vec![0; rope.inv_freq.len()];
    for (i, f) in rope.inv_freq.iter_mut().enumerate() {
        let sector = i % total;
        let by_position = sector < 3 * s[sector % 3];
        if by_position {
            rope.section[i] = (sector % 3) as u8;
        } else {
            *f = 0.0;
        }
    }
    Ok(rope)
}

/// A gated full-attention block (trunk layer or MTP block) under prefix `p`.
fn load_attention(
    ld: &Loader,
    hp: &Hparams,
    p: &str,
    rope: &Rope,
    attn: &Attention,
) -> Result<Layer, ModelError> {
    let t = |s: &str| format!("{p}.{s}");
    let (d, q, kv, ff) = (hp.n_embd, hp.n_head * hp.head_dim, hp.kv_dim(), hp.n_ff);
    Ok(Layer {
        attn_norm: ld.vector(&t("attn_norm.weight"), d)?,
        wq: ld.matrix(&t("attn_q.weight"), d, 2 * q)?,
        wk: ld.matrix(&t("attn_k.weight"), d, kv)?,
        wv: ld.matrix(&t("attn_v.weight"), d, kv)?,
        wo: ld.matrix(&t("attn_output.weight"), q, d)?,
        bq: None,
        bk: None,
        bv: None,
        q_norm: Some(ld.vector(&t("attn_q_norm.weight"), hp.head_dim)?),
        k_norm: Some(ld.vector(&t("attn_k_norm.weight"), hp.head_dim)?),
        post_attn_norm: None,
        ffn_norm: ld.vector(&t("post_attention_norm.weight"), d)?,
        gate: ld.matrix(&t("ffn_gate.weight"), d, ff)?,
        up: ld.matrix(&t("ffn_up.weight"), d, ff)?,
        down: ld.matrix(&t("ffn_down.weight"), ff, d)?,
        post_ffn_norm: None,
        rope: rope.clone(),
        attn: attn.clone(),
    })
}

fn load_delta_net(
    ld: &Loader,
    hp: &Hparams,
    il: usize,
    net: &DeltaNet,
) -> Result<DeltaNetLayer, ModelError> {
    let t = |s: &str| format!("blk.{il}.{s}");
    let (d, ff, nv) = (hp.n_embd, hp.n_ff, net.n_v_heads);
    let (ch, vd) = (net.conv_channels(), net.value_dim());
    let conv_name = t("ssm_conv1d.weight");
    let conv = ld.matrix(&conv_name, net.conv_kernel, ch)?;
    let conv = conv.to_f32().map_err(|e| ModelError::BadTensor {
        tensor: conv_name,
        reason: e.to_string(),
    })?;
    Ok(DeltaNetLayer {
        attn_norm: ld.vector(&t("attn_norm.weight"), d)?,
        qkv: ld.matrix(&t("attn_qkv.weight"), d, ch)?,
        z: ld.matrix(&t("attn_gate.weight"), d, vd)?,
        conv,
        dt_bias: ld.vector(&t("ssm_dt.bias"), nv)?,
        a: ld.vector(&t("ssm_a"), nv)?,
        beta: ld.matrix(&t("ssm_beta.weight"), d, nv)?,
        alpha: ld.matrix(&t("ssm_alpha.weight"), d, nv)?,
        norm: ld.vector(&t("ssm_norm.weight"), net.head_v)?,
        out: ld.matrix(&t("ssm_out.weight"), vd, d)?,
        ffn_norm: ld.vector(&t("post_attention_norm.weight"), d)?,
        gate: ld.matrix(&t("ffn_gate.weight"), d, ff)?,
        up: ld.matrix(&t("ffn_up.weight"), d, ff)?,
        down: ld.matrix(&t("ffn_down.weight"), ff, d)?,
    })
}

/// The DeltaNet shape from the `ssm.*` keys.
fn delta_net_shape(ld: &Loader, arch: &str, eps: f32) -> Result<DeltaNet, ModelError> {
    let k = Keys::new(ld.metadata(), arch);
    let head_k = k.usize("ssm.state_size")?;
    let n_k_heads = k.usize("ssm.group_count")?;
    let n_v_heads = k.usize("ssm.time_step_rank")?;
    let inner = k.usize("ssm.inner_size")?;
    let conv_kernel = k.usize("ssm.conv_kernel")?;
    if !inner.is_multiple_of(n_v_heads) || !n_v_heads.is_multiple_of(n_k_heads) {
        return Err(ModelError::BadMetadata(
            format!("{arch}.ssm.inner_size"),
            format!("{inner} values in {n_v_heads} value heads over {n_k_heads} key heads"),
        ));
    }
    Ok(DeltaNet {
        n_k_heads,
        n_v_heads,
        head_k,
        head_v: inner / n_v_heads,
        conv_kernel,
        eps,
    })
}

/// Loads a `qwen35` model, declaring its extra activation buffers in `plan`.
pub(crate) fn load(
    ld: &Loader,
    plan: &mut Plan,
    max_logit_rows: usize,
) -> Result<Parts, ModelError> {
    let arch = "qwen35";
    let m = ld.metadata();
    let n_vocab = m.get_array("tokenizer.ggml.tokens").map_or(0, |a| a.len());
    let mut hp = Hparams::read(m, arch, n_vocab)?;
    let n_mtp = m
        .get_u64(&format!("{arch}.nextn_predict_layers"))
        .unwrap_or(0) as usize;
    if n_mtp >= hp.n_layer {
        return Err(ModelError::BadMetadata(
            format!("{arch}.nextn_predict_layers"),
            format!("{n_mtp} of {} blocks", hp.n_layer),
        ));
    }
    hp.n_layer -= n_mtp;
    let net = delta_net_shape(ld, arch, hp.eps)?;
    let recurrent = recurrent_layers(ld, arch, hp.n_layer)?;
    let rope = rope(ld, arch, &hp)?;
    let attn = Attention {
        n_heads: hp.n_head,
        n_kv_heads: hp.n_head_kv,
        head_dim: hp.head_dim,
        scale: 1.0 / (hp.head_dim as f32).sqrt(),
        window: None,
        softcap: None,
    };
    let (mut n_kv, mut n_rs) = (0, 0);
    // Grown as tensors are found: a bogus block count fails at its first missing tensor.
    let mut blocks = Vec::new();
    for il in 0..hp.n_layer {
        blocks.push(if recurrent(il) {
            n_rs += 1;
            Block::DeltaNet {
                layer: load_delta_net(ld, &hp, il, &net)?,
                rs: n_rs - 1,
            }
        } else {
            n_kv += 1;
            Block::Attention {
                layer: load_attention(ld, &hp, &format!("blk.{il}"), &rope, &attn)?,
                kv: n_kv - 1,
            }
        });
    }
    let (tok_embd, output_norm, output) = crate::blocks::load_ends(ld, &hp)?;
    let mut mtp = Vec::new();
    for il in hp.n_layer..hp.n_layer + n_mtp {
        let p = format!("blk.{il}");
        let t = |s: &str| format!("{p}.nextn.{s}");
        let d = hp.n_embd;
        let optional_matrix = |name: String| {
            if ld.has(&name) {
                ld.matrix(&name, d, hp.n_vocab).map(Some)
            } else {
                Ok(None)
            }
        };
        mtp.push(Mtp {
            block: load_attention(ld, &hp, &p, &rope, &attn)?,
            kv: n_kv + mtp.len(),
            eh_proj: ld.matrix(&t("eh_proj.weight"), 2 * d, d)?,
            enorm: ld.vector(&t("enorm.weight"), d)?,
            hnorm: ld.vector(&t("hnorm.weight"), d)?,
            shared_head_norm: ld
                .optional_vector(&t("shared_head_norm.weight"), d)?
                .unwrap_or_else(|| output_norm.clone()),
            embed_tokens: optional_matrix(t("embed_tokens.weight"))?,
            shared_head_head: optional_matrix(t("shared_head_head.weight"))?,
        });
    }
    let q_dim = hp.n_head * hp.head_dim;
    let acts = HybridActs {
        q_gate: plan.act(2 * q_dim),
        attn_gate: plan.act(q_dim),
        qkv: plan.act(net.conv_channels()),
        conv: plan.act(net.conv_channels()),
        z: plan.act(net.value_dim()),
        alpha: plan.act(net.n_v_heads),
        beta: plan.act(net.n_v_heads),
        delta: plan.act(net.value_dim()),
        h: plan.act(hp.n_embd),
        mtp_h_in: plan.act(hp.n_embd),
        mtp_e: plan.act(hp.n_embd),
        mtp_cat: plan.act(2 * hp.n_embd),
        mtp_h: plan.act(hp.n_embd),
        mtp_last: plan.act_rows(hp.n_embd, max_logit_rows),
        mtp_logits: plan.act_rows(hp.n_vocab, max_logit_rows),
    };
    let hybrid = Hybrid {
        blocks,
        n_kv: n_kv + mtp.len(),
        mtp,
        net,
        n_recurrent: n_rs,
        acts,
    };
    Ok(Parts {
        hp,
        tok_embd,
        output_norm,
        output,
        layers: Vec::new(),
        embd_scale: None,
        final_softcap: None,
        hybrid: Some(Box::new(hybrid)),
    })
}

/// The forward pass of the trunk's blocks `layers` (the embeddings with the first, the final
/// norm and head with the last); logits land in `acts.logits` and the final normed hidden
/// state of every token in `hybrid.acts.h`.
pub fn forward<O: Ops>(m: &Model, o: &O, layers: std::ops::Range<usize>) {
    let Some(hy) = m.hybrid.as_deref() else {
        return;
    };
    let (a, hp) = (&m.acts, &m.hp);
    let n = o.batch().len();
    if layers.start == 0 {
        o.embed(&m.tok_embd, a.x);
    }
    for block in hy.blocks.iter().take(layers.end).skip(layers.start) {
        let (attn_norm, ffn_norm, gate, up, down) = match block {
            Block::Attention { layer: l, .. } => {
                (&l.attn_norm, &l.ffn_norm, &l.gate, &l.up, &l.down)
            }
            Block::DeltaNet { layer: l, .. } => {
                (&l.attn_norm, &l.ffn_norm, &l.gate, &l.up, &l.down)
            }
        };
        o.rms_norm(n, a.x, Some(attn_norm), hp.eps, hp.n_embd, a.xn);
        match block {
            Block::Attention { layer, kv } => gated_attention(m, hy, o, layer, *kv),
            Block::DeltaNet { layer, rs } => delta_net(m, hy, o, layer, *rs),
        }
        o.add(n, a.x, a.out, a.x);
        o.rms_norm(n, a.x, Some(ffn_norm), hp.eps, hp.n_embd, a.xn);
        o.matmul(n, gate, a.xn, a.gate);
        o.matmul(n, up, a.xn, a.up);
        o.swiglu(n, a.gate, a.up, a.gate);
        o.matmul(n, down, a.gate, a.out);
        o.add(n, a.x, a.out, a.x);
    }
    if layers.end < hy.blocks.len() {
        return;
    }
    let h = hy.acts.h;
    o.rms_norm(n, a.x, Some(&m.output_norm), hp.eps, hp.n_embd, h);
    let nl = o.batch().logits.len();
    if nl > 0 {
        o.gather_logit_rows(h, a.last);
        o.matmul(nl, &m.output, a.last, a.logits);
    }
}

/// One pass of MTP block `k` over the batch: token `x_p` at position `p` with
/// `hybrid.acts.mtp_h_in` holding the hidden state of position `p − 1` (the trunk's, or the
/// block's own `mtp_h` when drafting further); writes its KV-cache layer, `mtp_h` for every
/// token and, for the tokens in `batch.logits`, `mtp_logits`. Touches neither the trunk's
/// logits and `h` nor the recurrent state.
pub fn mtp_forward<O: Ops>(m: &Model, o: &O, k: usize) {
    let Some(hy) = m.hybrid.as_deref() else {
        return;
    };
    let Some(mtp) = hy.mtp.get(k) else {
        return;
    };
    let (a, b, hp) = (&m.acts, &hy.acts, &m.hp);
    let (n, d) = (o.batch().len(), hp.n_embd);
    o.embed(mtp.embed_tokens.as_ref().unwrap_or(&m.tok_embd), a.xn);
    o.rms_norm(n, a.xn, Some(&mtp.enorm), hp.eps, d, b.mtp_e);
    o.rms_norm(n, b.mtp_h_in, Some(&mtp.hnorm), hp.eps, d, a.xn);
    o.concat(n, b.mtp_e, a.xn, b.mtp_cat);
    o.matmul(n, &mtp.eh_proj, b.mtp_cat, a.x);
    let l = &mtp.block;
    o.rms_norm(n, a.x, Some(&l.attn_norm), hp.eps, d, a.xn);
    gated_attention(m, hy, o, l, mtp.kv);
    o.add(n, a.x, a.out, a.x);
    o.rms_norm(n, a.x, Some(&l.ffn_norm), hp.eps, d, a.xn);
    o.matmul(n, &l.gate, a.xn, a.gate);
    o.matmul(n, &l.up, a.xn, a.up);
    o.swiglu(n, a.gate, a.up, a.gate);
    o.matmul(n, &l.down, a.gate, a.out);
    o.add(n, a.x, a.out, a.x);
    o.rms_norm(n, a.x, Some(&mtp.shared_head_norm), hp.eps, d, b.mtp_h);
    let nl = o.batch().logits.len();
    if nl > 0 {
        o.gather_logit_rows(b.mtp_h, b.mtp_last);
        let head = mtp.shared_head_head.as_ref().unwrap_or(&m.output);
        o.matmul(nl, head, b.mtp_last, b.mtp_logits);
    }
}

/// Gated full attention of `l` (KV-cache layer `kv`), reading `acts.xn`, into `acts.out`.
pub fn gated_attention<O: Ops>(m: &Model, hy: &Hybrid, o: &O, l: &Layer, kv: usize) {
    let (a, b, hp) = (&m.acts, &hy.acts, &m.hp);
    let n = o.batch().len();
    o.matmul(n, &l.wq, a.xn, b.q_gate);
    o.matmul(n, &l.wk, a.xn, a.k);
    o.matmul(n, &l.wv, a.xn, a.v);
    o.unzip(n, b.q_gate, hp.head_dim, a.q, b.attn_gate);
    o.rms_norm(n, a.q, l.q_norm.as_deref(), hp.eps, hp.head_dim, a.q);
    o.rms_norm(n, a.k, l.k_norm.as_deref(), hp.eps, hp.head_dim, a.k);
    o.rope(a.q, hp.n_head, hp.head_dim, &l.rope);
    o.rope(a.k, hp.n_head_kv, hp.head_dim, &l.rope);
    o.attention(kv, a.q, a.k, a.v, &l.attn, a.attn);
    o.sigmoid_mul(n, a.attn, b.attn_gate, a.attn);
    o.matmul(n, &l.wo, a.attn, a.out);
}

/// Gated DeltaNet mixer of `l` (recurrent layer `rs`), reading `acts.xn`, into `acts.out`.
pub fn delta_net<O: Ops>(m: &Model, hy: &Hybrid, o: &O, l: &DeltaNetLayer, rs: usize) {
    let (a, b, net) = (&m.acts, &hy.acts, &hy.net);
    let n = o.batch().len();
    o.matmul(n, &l.qkv, a.xn, b.qkv);
    o.matmul(n, &l.z, a.xn, b.z);
    o.matmul(n, &l.beta, a.xn, b.beta);
    o.matmul(n, &l.alpha, a.xn, b.alpha);
    o.delta_gates(n, b.alpha, b.beta, &l.dt_bias, &l.a);
    o.conv_silu(rs, b.qkv, &l.conv, net, b.conv);
    o.gated_delta(rs, b.conv, b.alpha, b.beta, net, b.delta);
    o.gated_rms_norm(n, b.delta, b.z, &l.norm, m.hp.eps, b.delta);
    o.matmul(n, &l.out, b.delta, a.out);
}
