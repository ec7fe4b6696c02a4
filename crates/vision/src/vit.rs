//! What both towers share: hyper-parameters from the file, the f16-rounded patch embedding,
//! and the pre-norm ViT block (LayerNorm, attention with biases, LayerNorm, GELU MLP).

use runtime::Weight;

use crate::nn::{self, f16_round};
use crate::VisionError;
use model::Loader;

/// The `clip.vision.*` keys of a projector file.
#[derive(Clone, Debug)]
pub struct VisionHparams {
    /// Side of the square image the tower was trained on.
    pub image_size: usize,
    /// Side of a patch, in pixels.
    pub patch_size: usize,
    /// Width of the tower.
    pub n_embd: usize,
    /// Hidden width of the MLP.
    pub n_ff: usize,
    /// ViT blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Per-channel mean subtracted from the pixels (0..1).
    pub mean: [f32; 3],
    /// Per-channel standard deviation the pixels are divided by.
    pub std: [f32; 3],
    /// Attention as llama.cpp's default (flash attention on its CPU backend) computes it:
    /// queries, keys and values rounded to f16 and the weighted sum of values accumulated
    /// in f16. Off: plain f32 (llama.cpp's `-fa off`). Not a file key; on by default.
    pub f16_attention: bool,
}

impl VisionHparams {
    pub(crate) fn read(m: &gguf::Metadata) -> Result<VisionHparams, VisionError> {
        let k = |s: &str| format!("clip.vision.{s}");
        let hp = VisionHparams {
            image_size: count(m, &k("image_size"))?,
            patch_size: count(m, &k("patch_size"))?,
            n_embd: count(m, &k("embedding_length"))?,
            n_ff: count(m, &k("feed_forward_length"))?,
            n_layer: count(m, &k("block_count"))?,
            n_head: count(m, &k("attention.head_count"))?,
            eps: f32_or(m, &k("attention.layer_norm_epsilon"), 1e-6)?,
            mean: rgb(m, &k("image_mean"))?,
            std: rgb(m, &k("image_std"))?,
            f16_attention: true,
        };
        if !hp.n_embd.is_multiple_of(hp.n_head) {
            return Err(VisionError::Metadata(
                k("attention.head_count"),
                format!("{} heads do not divide width {}", hp.n_head, hp.n_embd),
            ));
        }
        if hp.std.contains(&0.0) {
            return Err(VisionError::Metadata(k("image_std"), "a zero".into()));
        }
        Ok(hp)
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// A required unsigned key, at least 1.
fn count(m: &gguf::Metadata, key: &str) -> Result<usize, VisionError> {
    let v = m
        .get_u64(key)
        .ok_or_else(|| VisionError::Metadata(key.into(), "missing or not an integer".into()))?;
    if v == 0 || v > 1 << 20 {
        return Err(VisionError::Metadata(
            key.into(),
            format!("{v} is out of range"),
        ));
    }
    Ok(v as usize)
}

/// An f32 key, or `default` when absent.
fn f32_or(m: &gguf::Metadata, key: &str, default: f32) -> Result<f32, VisionError> {
    match m.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f32()
            .filter(|x| x.is_finite())
            .ok_or_else(|| VisionError::Metadata(key.into(), "not a finite number".into())),
    }
}

/// A required array of three f32 values (image mean or std).
fn rgb(m: &gguf::Metadata, key: &str) -> Result<[f32; 3], VisionError> {
    let bad = || VisionError::Metadata(key.into(), "expected 3 numbers".into());
    let a = m.get_array(key).ok_or_else(bad)?;
    if a.len() != 3 {
        return Err(bad());
    }
    let mut out = [0.0f32; 3];
    for (i, o) in out.iter_mut().enumerate() {
        *o = a.get(i).and_then(|v| v.as_f32()).ok_or_else(bad)?;
    }
    Ok(out)
}

/// A patch-embedding kernel `[p, p, 3, n_embd]`, its values rounded to f16 as llama.cpp's
/// convolution does.
pub(crate) struct PatchKernel {
    /// n_embd rows of 3·p·p values in (channel, row, column) order.
    pub w: Vec<f32>,
}

impl PatchKernel {
    pub fn load(t: &Loader, name: &str, hp: &VisionHparams) -> Result<PatchKernel, VisionError> {
        let p = hp.patch_size as u64;
        let mut w = t.values(name, &[p, p, 3, hp.n_embd as u64])?;
        for v in &mut w {
            *v = f16_round(*v);
        }
        Ok(PatchKernel { w })
    }
}

/// Patches of `img` (channel-planar, `w` × `h`, `p`-pixel patches) in raster order, each
/// flattened in (channel, row, column) order and rounded to f16.
pub(crate) fn patches(values: &[f32], w: usize, h: usize, p: usize) -> Vec<f32> {
    let (pw, ph) = (w / p, h / p);
    let per = 3 * p * p;
    let mut out = vec![0.0f32; pw * ph * per];
    for py in 0..ph {
        for px in 0..pw {
            let dst = &mut out[(py * pw + px) * per..][..per];
            for c in 0..3 {
                for y in 0..p {
                    let src = &values[(c * h + py * p + y) * w + px * p..][..p];
                    for (d, &s) in dst[(c * p + y) * p..][..p].iter_mut().zip(src) {
                        *d = f16_round(s);
                    }
                }
            }
        }
    }
    out
}

/// `n` patches (rows of `per` values) times each kernel, summed, plus the bias.
pub(crate) fn patch_embed(
    patches: &[f32],
    n: usize,
    kernels: &[&PatchKernel],
    bias: &[f32],
) -> Vec<f32> {
    let d = bias.len();
    let per = patches.len() / n.max(1);
    let mut out = vec![0.0f32; n * d];
    for i in 0..n {
        let x = &patches[i * per..(i + 1) * per];
        for (j, o) in out[i * d..(i + 1) * d].iter_mut().enumerate() {
            let mut s = 0.0f32;
            for k in kernels {
                s += runtime::cpu::kernels::dot(x, &k.w[j * per..(j + 1) * per]);
            }
            *o = s + bias[j];
        }
    }
    out
}

/// Query, key and value projections: one fused matrix (Qwen) or three (SigLIP).
pub(crate) enum Qkv {
    Fused(Weight, Vec<f32>),
    Split([(Weight, Vec<f32>); 3]),
}

/// Rotates the queries or keys (all heads, one row) of token `i`.
pub(crate) type RopeFn<'a> = &'a dyn Fn(usize, &mut [f32]);

/// One pre-norm transformer block of a vision tower.
pub(crate) struct Block {
    ln1: (Vec<f32>, Vec<f32>),
    qkv: Qkv,
    out: (Weight, Vec<f32>),
    ln2: (Vec<f32>, Vec<f32>),
    up: (Weight, Vec<f32>),
    down: (Weight, Vec<f32>),
}

impl Block {
    pub fn load(t: &Loader, hp: &VisionHparams, il: usize) -> Result<Block, VisionError> {
        let p = |s: &str| format!("v.blk.{il}.{s}");
        let (d, ff) = (hp.n_embd as u64, hp.n_ff as u64);
        let linear = |name: &str, n_in: u64, n_out: u64| -> Result<_, VisionError> {
            Ok((
                t.weight(&p(&format!("{name}.weight")), &[n_in, n_out])?,
                t.vector(&p(&format!("{name}.bias")), n_out as usize)?,
            ))
        };
        let norm = |name: &str| -> Result<_, VisionError> {
            Ok((
                t.vector(&p(&format!("{name}.weight")), d as usize)?,
                t.vector(&p(&format!("{name}.bias")), d as usize)?,
            ))
        };
        let qkv = if t.has(&p("attn_qkv.weight")) {
            let (w, b) = linear("attn_qkv", d, 3 * d)?;
            Qkv::Fused(w, b)
        } else {
            Qkv::Split([
                linear("attn_q", d, d)?,
                linear("attn_k", d, d)?,
                linear("attn_v", d, d)?,
            ])
        };
        // Old conversions stored the two FFN matrices swapped (llama.cpp swaps them back
        // when `ffn_down` maps from the tower's width).
        let swapped = t
            .dims(&p("ffn_down.weight"))
            .is_some_and(|dm| dm[0] == d && ff != d);
        let (up, down) = if swapped {
            (linear("ffn_down", d, ff)?, linear("ffn_up", ff, d)?)
        } else {
            (linear("ffn_up", d, ff)?, linear("ffn_down", ff, d)?)
        };
        Ok(Block {
            ln1: norm("ln1")?,
            qkv,
            out: linear("attn_out", d, d)?,
            ln2: norm("ln2")?,
            up,
            down,
        })
    }

    /// Runs the block on `x` (n × n_embd), in place. `rope` rotates a row of queries or
    /// keys (all heads) of token i.
    pub fn forward(&self, x: &mut [f32], n: usize, hp: &VisionHparams, rope: Option<RopeFn>) {
        let d = hp.n_embd;
        let hd = hp.head_dim();
        let mut h = x.to_vec();
        nn::layer_norm(&mut h, d, &self.ln1.0, &self.ln1.1, hp.eps);
        // Q, K and V side by side in rows of 3d.
        let mut qkv = match &self.qkv {
            Qkv::Fused(w, b) => nn::linear(&h, n, w, Some(b)),
            Qkv::Split(parts) => {
                let outs: Vec<Vec<f32>> = parts
                    .iter()
                    .map(|(w, b)| nn::linear(&h, n, w, Some(b)))
                    .collect();
                let mut v = vec![0.0f32; n * 3 * d];
                for i in 0..n {
                    for (k, o) in outs.iter().enumerate() {
                        v[i * 3 * d + k * d..][..d].copy_from_slice(&o[i * d..(i + 1) * d]);
                    }
                }
                v
            }
        };
        if let Some(rope) = rope {
            for i in 0..n {
                let row = &mut qkv[i * 3 * d..(i + 1) * 3 * d];
                rope(i, &mut row[..d]);
                rope(i, &mut row[d..2 * d]);
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let attend = if hp.f16_attention {
            nn::attention_f16
        } else {
            nn::attention
        };
        let attn = attend(
            (&qkv, 0),
            (&qkv, d),
            (&qkv, 2 * d),
            3 * d,
            n,
            hp.n_head,
            hd,
            scale,
        );
        let o = nn::linear(&attn, n, &self.out.0, Some(&self.out.1));
        nn::add_inplace(x, &o);
        h.copy_from_slice(x);
        nn::layer_norm(&mut h, d, &self.ln2.0, &self.ln2.1, hp.eps);
        let mut u = nn::linear(&h, n, &self.up.0, Some(&self.up.1));
        nn::gelu_inplace(&mut u);
        let o = nn::linear(&u, n, &self.down.0, Some(&self.down.1));
        nn::add_inplace(x, &o);
    }
}
