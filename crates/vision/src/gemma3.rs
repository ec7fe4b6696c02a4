//! Gemma 3's vision side (`gemma3`): a SigLIP tower on a fixed square input, then average
//! pooling to a few tokens, RMSNorm × `mm.soft_emb_norm`, and a linear map to the text width.

use crate::nn;
use crate::preprocess::Preprocessed;
use crate::vit::{self, Block, PatchKernel, VisionHparams};
use crate::{ImageEmbeddings, VisionError};
use model::{Loader, WeightError};

/// Pooling window when the file has no `clip.vision.projector.scale_factor`.
const DEFAULT_POOL: usize = 4;

/// The loaded tower and projector.
pub(crate) struct Gemma3 {
    pub hp: VisionHparams,
    kernel: PatchKernel,
    patch_bias: Vec<f32>,
    pos: Vec<f32>,
    pre_ln: Option<(Vec<f32>, Vec<f32>)>,
    blocks: Vec<Block>,
    post_ln: (Vec<f32>, Vec<f32>),
    pool: usize,
    soft_emb_norm: Vec<f32>,
    /// `mm.input_projection.weight`: n_embd rows of `n_out` (output contiguous).
    proj: Vec<f32>,
    pub n_out: usize,
}

impl Gemma3 {
    pub fn load(t: &Loader, hp: VisionHparams) -> Result<Gemma3, VisionError> {
        let d = hp.n_embd as u64;
        let side = hp.image_size / hp.patch_size;
        if side * hp.patch_size != hp.image_size {
            return Err(VisionError::Metadata(
                "clip.vision.image_size".into(),
                "not a multiple of the patch size".into(),
            ));
        }
        let pool = match t.metadata().get_u64("clip.vision.projector.scale_factor") {
            Some(s) if s >= 1 && side.is_multiple_of(s as usize) => s as usize,
            Some(s) => {
                return Err(VisionError::Metadata(
                    "clip.vision.projector.scale_factor".into(),
                    format!("{s} does not divide the {side}-patch grid"),
                ))
            }
            None if side.is_multiple_of(DEFAULT_POOL) => DEFAULT_POOL,
            None => 1,
        };
        let norm = |name: &str| -> Result<_, VisionError> {
            Ok((
                t.vector(&format!("{name}.weight"), hp.n_embd)?,
                t.vector(&format!("{name}.bias"), hp.n_embd)?,
            ))
        };
        let n_out = t
            .dims("mm.input_projection.weight")
            .ok_or_else(|| WeightError::MissingTensor("mm.input_projection.weight".into()))?[0];
        Ok(Gemma3 {
            kernel: PatchKernel::load(t, "v.patch_embd.weight", &hp)?,
            patch_bias: t.vector("v.patch_embd.bias", hp.n_embd)?,
            pos: t.values("v.position_embd.weight", &[d, (side * side) as u64])?,
            pre_ln: if t.has("v.pre_ln.weight") {
                Some(norm("v.pre_ln")?)
            } else {
                None
            },
            blocks: (0..hp.n_layer)
                .map(|il| Block::load(t, &hp, il))
                .collect::<Result<_, _>>()?,
            post_ln: norm("v.post_ln")?,
            pool,
            soft_emb_norm: t.vector("mm.soft_emb_norm.weight", hp.n_embd)?,
            proj: t.values("mm.input_projection.weight", &[n_out, d])?,
            n_out: n_out as usize,
            hp,
        })
    }

    /// Tokens per image.
    pub fn n_tokens(&self) -> usize {
        let side = self.hp.image_size / self.hp.patch_size / self.pool;
        side * side
    }

    pub fn encode(&self, img: &Preprocessed) -> Result<ImageEmbeddings, VisionError> {
        let hp = &self.hp;
        let (p, d, s) = (hp.patch_size, hp.n_embd, hp.image_size);
        if img.width as usize != s || img.height as usize != s {
            return Err(VisionError::Image(format!(
                "the gemma3 tower takes {s}×{s} inputs, not {}×{}",
                img.width, img.height
            )));
        }
        let side = s / p;
        let n = side * side;
        let patches = vit::patches(&img.values, s, s, p);
        let mut x = vit::patch_embed(&patches, n, &[&self.kernel], &self.patch_bias);
        nn::add_inplace(&mut x, &self.pos);
        if let Some((w, b)) = &self.pre_ln {
            nn::layer_norm(&mut x, d, w, b, hp.eps);
        }
        for b in &self.blocks {
            b.forward(&mut x, n, hp, None);
        }
        nn::layer_norm(&mut x, d, &self.post_ln.0, &self.post_ln.1, hp.eps);
        // Average pooling in non-overlapping windows, row-major.
        let (k, ps) = (self.pool, side / self.pool);
        let mut pooled = vec![0.0f32; ps * ps * d];
        let inv = 1.0 / (k * k) as f32;
        for py in 0..ps {
            for px in 0..ps {
                let o = &mut pooled[(py * ps + px) * d..][..d];
                for y in py * k..(py + 1) * k {
                    for xx in px * k..(px + 1) * k {
                        nn::add_inplace(o, &x[(y * side + xx) * d..][..d]);
                    }
                }
                for v in o.iter_mut() {
                    *v *= inv;
                }
            }
        }
        let n_tok = ps * ps;
        let mut normed = vec![0.0f32; d];
        let mut data = vec![0.0f32; n_tok * self.n_out];
        for t in 0..n_tok {
            let row = &pooled[t * d..(t + 1) * d];
            runtime::cpu::kernels::rms_norm(row, Some(&self.soft_emb_norm), hp.eps, &mut normed);
            let out = &mut data[t * self.n_out..(t + 1) * self.n_out];
            for (i, &v) in normed.iter().enumerate() {
                runtime::cpu::kernels::axpy(v, &self.proj[i * self.n_out..][..self.n_out], out);
            }
        }
        Ok(ImageEmbeddings {
            n_tokens: n_tok,
            n_embd: self.n_out,
            nx: ps,
            ny: ps,
            data,
        })
    }
}
