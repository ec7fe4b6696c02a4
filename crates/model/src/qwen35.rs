//! Qwen3.5 / Qwen3.6 dense (GGUF architecture `qwen35`): a hybrid of Gated DeltaNet layers
//! (linear attention with a recurrent state) and gated full-attention layers, every
//! `full_attention_interval`-th layer (or as `attention.recurrent_layers` says), each followed
//! by a SwiGLU FFN; tied or separate LM head. The file may also hold multi-token-prediction
//! ("nextn") blocks after the trunk; they are loaded as [`Mtp`] blocks beside it. The head
//! keeps every token's final hidden state, the MTP blocks' input.
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
use runtime::{DeltaNet, Rope, RopeMode};

use crate::hparams::Keys;
use crate::mixer::{AttentionMixer, DeltaNetMixer};
use crate::{Activation, Block, Ffn, Hparams, Loader, Mixer, ModelError, Mtp, Parts};

/// Every `DEFAULT_INTERVAL`-th layer is full attention when the file does not say.
const DEFAULT_INTERVAL: usize = 4;

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

/// Block `p` (`blk.N`) around `mixer`: `attn_norm` before it, `post_attention_norm`
/// before the SwiGLU FFN, no post-norms. `mixer` loads between the two norms.
fn block(
    ld: &Loader,
    hp: &Hparams,
    p: &str,
    mixer: impl FnOnce() -> Result<Mixer, ModelError>,
) -> Result<Block, ModelError> {
    let t = |s: &str| format!("{p}.{s}");
    Ok(Block {
        attn_norm: ld.vector(&t("attn_norm.weight"), hp.n_embd)?,
        mixer: mixer()?,
        post_mix_norm: None,
        ffn_norm: ld.vector(&t("post_attention_norm.weight"), hp.n_embd)?,
        ffn: Ffn::load(ld, hp, p, Activation::Silu)?,
        post_ffn_norm: None,
    })
}

/// Gated full attention of block `p` with KV-cache layer `kv`; its Q/K norms are required.
fn attention(
    ld: &Loader,
    hp: &Hparams,
    p: &str,
    rope: &Rope,
    kv: usize,
) -> Result<Mixer, ModelError> {
    let a = AttentionMixer::load(ld, hp, p, true, rope.clone(), hp.attention(None), kv)?;
    for (name, present) in [("q", a.q_norm.is_some()), ("k", a.k_norm.is_some())] {
        if !present {
            let name = format!("{p}.attn_{name}_norm.weight");
            return Err(crate::WeightError::MissingTensor(name).into());
        }
    }
    Ok(Mixer::Attention(a))
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

/// Loads a `qwen35` model: the trunk's blocks, then its MTP blocks.
pub(crate) fn load(ld: &Loader) -> Result<Parts, ModelError> {
    let arch = "qwen35";
    let m = ld.metadata();
    let mut hp = Hparams::read(m, arch)?;
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
    let (mut n_kv, mut n_rs) = (0, 0);
    // Grown as tensors are found: a bogus block count fails at its first missing tensor.
    let mut blocks = Vec::new();
    for il in 0..hp.n_layer {
        let p = format!("blk.{il}");
        let b = if recurrent(il) {
            let rs = n_rs;
            n_rs += 1;
            let mixer = || DeltaNetMixer::load(ld, &hp, &p, &net, rs).map(Mixer::DeltaNet);
            block(ld, &hp, &p, mixer)?
        } else {
            let kv = n_kv;
            n_kv += 1;
            block(ld, &hp, &p, || attention(ld, &hp, &p, &rope, kv))?
        };
        blocks.push(b);
    }
    let mut parts = Parts::new(ld, hp, blocks)?;
    let hp = &parts.hp;
    for (k, il) in (hp.n_layer..hp.n_layer + n_mtp).enumerate() {
        let p = format!("blk.{il}");
        let b = block(ld, hp, &p, || attention(ld, hp, &p, &rope, n_kv + k))?;
        let mtp = Mtp::load(ld, &p, b, hp.n_embd, hp.n_vocab, &parts.output_norm)?;
        parts.mtp.push(mtp);
    }
    parts.keep_hidden = true;
    Ok(parts)
}
