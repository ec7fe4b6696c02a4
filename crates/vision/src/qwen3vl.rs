//! The Qwen3-VL vision tower (`qwen3vl_merger`): two temporal patch kernels, learned positions
//! resized to the patch grid, 2-D rotary attention, and the 2 × 2 merger MLP.

use crate::nn;
use crate::preprocess::Preprocessed;
use crate::vit::{self, Block, PatchKernel, VisionHparams};
use crate::{ImageEmbeddings, VisionError};
use model::{Loader, WeightError};

/// Patches merged into one token along each side.
pub const MERGE: usize = 2;

/// The loaded tower.
pub(crate) struct Qwen3Vl {
    pub hp: VisionHparams,
    kernels: [PatchKernel; 2],
    patch_bias: Vec<f32>,
    /// Learned positions: `grid × grid` rows of n_embd.
    pos: Vec<f32>,
    grid: usize,
    pre_ln: Option<(Vec<f32>, Vec<f32>)>,
    blocks: Vec<Block>,
    post_ln: (Vec<f32>, Vec<f32>),
    fc1: (runtime::Weight, Vec<f32>),
    fc2: (runtime::Weight, Vec<f32>),
    /// Output width (the text model's embedding width).
    pub n_out: usize,
}

impl Qwen3Vl {
    pub fn load(t: &Loader, hp: VisionHparams) -> Result<Qwen3Vl, VisionError> {
        let merge = t
            .metadata()
            .get_u64("clip.vision.spatial_merge_size")
            .unwrap_or(MERGE as u64);
        if merge != MERGE as u64 {
            return Err(VisionError::Unsupported(format!(
                "spatial_merge_size {merge} (only {MERGE})"
            )));
        }
        if t.has("v.deepstack.0.fc1.weight")
            || (0..hp.n_layer).any(|il| t.has(&format!("v.deepstack.{il}.fc1.weight")))
        {
            return Err(VisionError::Unsupported(
                "deepstack layers (v.deepstack.*) of a qwen3vl_merger projector".into(),
            ));
        }
        if !hp.head_dim().is_multiple_of(4) {
            return Err(VisionError::Metadata(
                "clip.vision.attention.head_count".into(),
                "2-D rotary needs a head size divisible by 4".into(),
            ));
        }
        let d = hp.n_embd as u64;
        let kernels = [
            PatchKernel::load(t, "v.patch_embd.weight", &hp)?,
            PatchKernel::load(t, "v.patch_embd.weight.1", &hp)?,
        ];
        let patch_bias = t.vector("v.patch_embd.bias", hp.n_embd)?;
        let n_pos = t
            .dims("v.position_embd.weight")
            .and_then(|dm| dm.get(1).copied())
            .ok_or_else(|| WeightError::MissingTensor("v.position_embd.weight".into()))?;
        let grid = (n_pos as f64).sqrt().round() as usize;
        if grid * grid != n_pos as usize || grid < 2 {
            return Err(WeightError::BadTensor {
                tensor: "v.position_embd.weight".into(),
                reason: format!("{n_pos} positions are not a square grid"),
            }
            .into());
        }
        let pos = t.values("v.position_embd.weight", &[d, n_pos])?;
        let norm = |name: &str| -> Result<_, VisionError> {
            Ok((
                t.vector(&format!("{name}.weight"), hp.n_embd)?,
                t.vector(&format!("{name}.bias"), hp.n_embd)?,
            ))
        };
        let pre_ln = if t.has("v.pre_ln.weight") {
            Some(norm("v.pre_ln")?)
        } else {
            None
        };
        let blocks = (0..hp.n_layer)
            .map(|il| Block::load(t, &hp, il))
            .collect::<Result<_, _>>()?;
        let post_ln = norm("v.post_ln")?;
        let m = d * (MERGE * MERGE) as u64;
        let n_out = t
            .dims("mm.2.bias")
            .ok_or_else(|| WeightError::MissingTensor("mm.2.bias".into()))?[0];
        let fc1 = (
            t.weight("mm.0.weight", &[m, m])?,
            t.vector("mm.0.bias", m as usize)?,
        );
        let fc2 = (
            t.weight("mm.2.weight", &[m, n_out])?,
            t.vector("mm.2.bias", n_out as usize)?,
        );
        Ok(Qwen3Vl {
            hp,
            kernels,
            patch_bias,
            pos,
            grid,
            pre_ln,
            blocks,
            post_ln,
            fc1,
            fc2,
            n_out: n_out as usize,
        })
    }

    /// The learned positions resized to `ph × pw` (bilinear, aligned corners, f32), raster
    /// order.
    fn positions(&self, pw: usize, ph: usize) -> Vec<f32> {
        let (g, d) = (self.grid, self.hp.n_embd);
        if pw == g && ph == g {
            return self.pos.clone();
        }
        // Source coordinate of output index i: i / ((n_out − 1) / (g − 1)).
        let axis = |n: usize, i: usize| -> (usize, usize, f32) {
            let sf = if n > 1 {
                (n - 1) as f32 / (g - 1) as f32
            } else {
                n as f32 / g as f32
            };
            let x = i as f32 / sf;
            let x0 = (x.floor() as i64).clamp(0, g as i64 - 1) as usize;
            let x1 = (x0 + 1).min(g - 1);
            let dx = (x - x0 as f32).clamp(0.0, 1.0);
            (x0, x1, dx)
        };
        let mut out = vec![0.0f32; pw * ph * d];
        for y in 0..ph {
            let (y0, y1, dy) = axis(ph, y);
            for x in 0..pw {
                let (x0, x1, dx) = axis(pw, x);
                let o = &mut out[(y * pw + x) * d..][..d];
                let row = |yy: usize, xx: usize| &self.pos[(yy * g + xx) * d..][..d];
                let (a, b, c, e) = (row(y0, x0), row(y0, x1), row(y1, x0), row(y1, x1));
                for k in 0..d {
                    o[k] = a[k] * (1.0 - dx) * (1.0 - dy)
                        + b[k] * dx * (1.0 - dy)
                        + c[k] * (1.0 - dx) * dy
                        + e[k] * dx * dy;
                }
            }
        }
        out
    }

    /// Image embeddings of a preprocessed image (width and height multiples of 2 × patch).
    pub fn encode(&self, img: &Preprocessed) -> Result<ImageEmbeddings, VisionError> {
        let hp = &self.hp;
        let (p, d) = (hp.patch_size, hp.n_embd);
        let (w, h) = (img.width as usize, img.height as usize);
        let (pw, ph) = (w / p, h / p);
        if pw * p != w || ph * p != h || pw % MERGE != 0 || ph % MERGE != 0 || pw == 0 || ph == 0 {
            return Err(VisionError::Image(format!(
                "a {w}×{h} input is not a multiple of {} pixels",
                p * MERGE
            )));
        }
        let n = pw * ph;
        let patches = vit::patches(&img.values, w, h, p);
        let mut x = vit::patch_embed(
            &patches,
            n,
            &[&self.kernels[0], &self.kernels[1]],
            &self.patch_bias,
        );
        nn::add_inplace(&mut x, &self.positions(pw, ph));
        // Reorder into 2 × 2 blocks (raster over blocks, raster inside), remembering each
        // token's (row, column) on the patch grid.
        let mut order = Vec::with_capacity(n);
        for by in 0..ph / MERGE {
            for bx in 0..pw / MERGE {
                for dy in 0..MERGE {
                    for dx in 0..MERGE {
                        order.push((by * MERGE + dy, bx * MERGE + dx));
                    }
                }
            }
        }
        let mut xs = vec![0.0f32; n * d];
        for (i, &(r, c)) in order.iter().enumerate() {
            xs[i * d..(i + 1) * d].copy_from_slice(&x[(r * pw + c) * d..][..d]);
        }
        if let Some((w, b)) = &self.pre_ln {
            nn::layer_norm(&mut xs, d, w, b, hp.eps);
        }
        // 2-D rotary: in each head, pair (k, k + hd/2); the first hd/4 pairs turn with the
        // row, the next hd/4 with the column, at base^(-2j/(hd/2)).
        let hd = hp.head_dim();
        let quarter = hd / 4;
        let inv_freq: Vec<f32> = (0..quarter)
            .map(|j| 10000f64.powf(-2.0 * j as f64 / (hd / 2) as f64) as f32)
            .collect();
        let rope = |i: usize, row: &mut [f32]| {
            let (r, c) = order[i];
            for head in row.chunks_exact_mut(hd) {
                for k in 0..hd / 2 {
                    let pos = if k < quarter { r } else { c } as f32;
                    let (s, co) = (pos * inv_freq[k % quarter]).sin_cos();
                    let (a, b) = (head[k], head[k + hd / 2]);
                    head[k] = a * co - b * s;
                    head[k + hd / 2] = a * s + b * co;
                }
            }
        };
        for b in &self.blocks {
            b.forward(&mut xs, n, hp, Some(&rope));
        }
        nn::layer_norm(&mut xs, d, &self.post_ln.0, &self.post_ln.1, hp.eps);
        // Each run of four tokens (one 2 × 2 block) is one merged row of 4d.
        let n_tok = n / (MERGE * MERGE);
        let mut hmid = nn::linear(&xs, n_tok, &self.fc1.0, Some(&self.fc1.1));
        nn::gelu_inplace(&mut hmid);
        let data = nn::linear(&hmid, n_tok, &self.fc2.0, Some(&self.fc2.1));
        Ok(ImageEmbeddings {
            n_tokens: n_tok,
            n_embd: self.n_out,
            nx: pw / MERGE,
            ny: ph / MERGE,
            data,
        })
    }
}
