//! Building blocks shared by the families: loading a standard block's tensors, the
//! attention sub-block, the gated FFN, and the output head.

use runtime::{Attention, Ops, Rope, RopeMode};

use crate::{Hparams, Layer, Loader, Model, ModelError, Parts};

/// Loads the tensors every family has, named as llama.cpp's converter names them, plus the
/// optional ones present in the file.
pub fn load_layer(
    ld: &Loader,
    hp: &Hparams,
    il: usize,
    rope: Rope,
    attn: Attention,
) -> Result<Layer, ModelError> {
    let p = |s: &str| format!("blk.{il}.{s}");
    let (d, q, kv, ff) = (hp.n_embd, hp.n_head * hp.head_dim, hp.kv_dim(), hp.n_ff);
    Ok(Layer {
        attn_norm: ld.vector(&p("attn_norm.weight"), d)?,
        wq: ld.matrix(&p("attn_q.weight"), d, q)?,
        wk: ld.matrix(&p("attn_k.weight"), d, kv)?,
        wv: ld.matrix(&p("attn_v.weight"), d, kv)?,
        wo: ld.matrix(&p("attn_output.weight"), q, d)?,
        bq: ld.optional_vector(&p("attn_q.bias"), q)?,
        bk: ld.optional_vector(&p("attn_k.bias"), kv)?,
        bv: ld.optional_vector(&p("attn_v.bias"), kv)?,
        q_norm: ld.optional_vector(&p("attn_q_norm.weight"), hp.head_dim)?,
        k_norm: ld.optional_vector(&p("attn_k_norm.weight"), hp.head_dim)?,
        post_attn_norm: ld.optional_vector(&p("post_attention_norm.weight"), d)?,
        ffn_norm: ld.vector(&p("ffn_norm.weight"), d)?,
        gate: ld.matrix(&p("ffn_gate.weight"), d, ff)?,
        up: ld.matrix(&p("ffn_up.weight"), d, ff)?,
        down: ld.matrix(&p("ffn_down.weight"), ff, d)?,
        post_ffn_norm: ld.optional_vector(&p("post_ffw_norm.weight"), d)?,
        rope,
        attn,
    })
}

/// Loads a model whose blocks all use the same RoPE and attention (llama, qwen2, qwen3).
pub fn load_uniform(ld: &Loader, arch: &str, mode: RopeMode) -> Result<Parts, ModelError> {
    let n_vocab = ld
        .metadata()
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len())
        .unwrap_or(0);
    let n_vocab = if n_vocab == 0 {
        ld.metadata()
            .get_u64(&format!("{arch}.vocab_size"))
            .unwrap_or(0) as usize
    } else {
        n_vocab
    };
    let hp = Hparams::read(ld.metadata(), arch, n_vocab)?;
    let rope = Rope::new(mode, hp.n_rot, hp.rope_base, hp.rope_freq_scale);
    let attn = Attention {
        n_heads: hp.n_head,
        n_kv_heads: hp.n_head_kv,
        head_dim: hp.head_dim,
        scale: 1.0 / (hp.head_dim as f32).sqrt(),
        window: None,
        softcap: None,
    };
    let layers = (0..hp.n_layer)
        .map(|il| load_layer(ld, &hp, il, rope.clone(), attn.clone()))
        .collect::<Result<_, _>>()?;
    let (tok_embd, output_norm, output) = load_ends(ld, &hp)?;
    Ok(Parts {
        hp,
        tok_embd,
        output_norm,
        output,
        layers,
        embd_scale: None,
        final_softcap: None,
        hybrid: None,
    })
}

/// The embedding matrix, the final norm and the LM head (tied to the embeddings when the
/// file has no `output.weight`).
pub fn load_ends(
    ld: &Loader,
    hp: &Hparams,
) -> Result<(runtime::Weight, Vec<f32>, runtime::Weight), ModelError> {
    let tok_embd = ld.matrix("token_embd.weight", hp.n_embd, hp.n_vocab)?;
    let output_norm = ld.vector("output_norm.weight", hp.n_embd)?;
    let output = if ld.has("output.weight") {
        ld.matrix("output.weight", hp.n_embd, hp.n_vocab)?
    } else {
        tok_embd.clone()
    };
    Ok((tok_embd, output_norm, output))
}

/// Attention sub-block: `acts.out = Wo · attention(rope(norm(Wq·xn + bq)), ...)` for layer
/// `il`, reading `acts.xn`.
pub fn attention<O: Ops>(m: &Model, o: &O, il: usize) {
    let (a, l, hp) = (&m.acts, &m.layers[il], &m.hp);
    let n = o.batch().len();
    o.matmul(n, &l.wq, a.xn, a.q);
    o.matmul(n, &l.wk, a.xn, a.k);
    o.matmul(n, &l.wv, a.xn, a.v);
    if let Some(b) = &l.bq {
        o.add_bias(n, a.q, b);
    }
    if let Some(b) = &l.bk {
        o.add_bias(n, a.k, b);
    }
    if let Some(b) = &l.bv {
        o.add_bias(n, a.v, b);
    }
    if let Some(w) = &l.q_norm {
        o.rms_norm(n, a.q, Some(w), hp.eps, hp.head_dim, a.q);
    }
    if let Some(w) = &l.k_norm {
        o.rms_norm(n, a.k, Some(w), hp.eps, hp.head_dim, a.k);
    }
    o.rope(a.q, hp.n_head, hp.head_dim, &l.rope);
    o.rope(a.k, hp.n_head_kv, hp.head_dim, &l.rope);
    o.attention(il, a.q, a.k, a.v, &l.attn, a.attn);
    o.matmul(n, &l.wo, a.attn, a.out);
}

/// Gated FFN: `acts.out = down(act(gate·xn) × up·xn)`, SiLU or GELU.
pub fn ffn<O: Ops>(m: &Model, o: &O, il: usize, gelu: bool) {
    let (a, l) = (&m.acts, &m.layers[il]);
    let n = o.batch().len();
    o.matmul(n, &l.gate, a.xn, a.gate);
    o.matmul(n, &l.up, a.xn, a.up);
    if gelu {
        o.geglu(n, a.gate, a.up, a.gate);
    } else {
        o.swiglu(n, a.gate, a.up, a.gate);
    }
    o.matmul(n, &l.down, a.gate, a.out);
}

/// Final norm and LM head for the tokens that want logits.
pub fn output<O: Ops>(m: &Model, o: &O) {
    let a = &m.acts;
    let n = o.batch().logits.len();
    if n == 0 {
        return;
    }
    o.gather_logit_rows(a.x, a.last);
    o.rms_norm(
        n,
        a.last,
        Some(&m.output_norm),
        m.hp.eps,
        m.hp.n_embd,
        a.last,
    );
    o.matmul(n, &m.output, a.last, a.logits);
    if let Some(cap) = m.final_softcap {
        o.softcap(n, a.logits, cap);
    }
}
