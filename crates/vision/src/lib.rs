//! Image input: vision projector files (GGUF architecture `clip`), image preprocessing, and
//! the vision towers that turn an image into embeddings for a text model.
//!
//! ```no_run
//! let proj = vision::Projector::open("mmproj.gguf")?;
//! let bytes = std::fs::read("cat.png").unwrap();
//! let img = vision::decode(&bytes, &vision::DecodeLimits::default())?;
//! let emb = proj.embed(&img)?;
//! println!("{} tokens of {} values", emb.n_tokens, emb.n_embd);
//! # Ok::<(), vision::VisionError>(())
//! ```

pub mod decode;
mod gemma3;
mod nn;
pub mod preprocess;
mod qwen3vl;
pub mod resize;
mod vit;

use std::path::Path;
use std::sync::Arc;

pub use decode::{decode, DecodeLimits, RgbImage};
pub use preprocess::Preprocessed;
pub use vit::VisionHparams;

use resize::Filter;

/// Why a projector could not be loaded or an image not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The file is not a readable GGUF.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// The file is a GGUF of another architecture.
    #[error("not a vision projector: general.architecture is {0:?}, expected \"clip\"")]
    NotClip(String),
    /// A projector type surplus does not run yet.
    #[error("not yet supported: projector type {0}")]
    UnsupportedProjector(String),
    /// A feature of the file surplus does not run yet.
    #[error("not yet supported: {0}")]
    Unsupported(String),
    /// A metadata key (named) is missing or malformed.
    #[error("metadata {0:?}: {1}")]
    Metadata(String, String),
    /// A tensor is missing or malformed.
    #[error(transparent)]
    Weight(#[from] model::WeightError),
    /// The image cannot be decoded.
    #[error("cannot use the image: {0}")]
    Image(String),
    /// The image exceeds the decode limits.
    #[error("image too large: {0}")]
    ImageTooLarge(String),
}

/// The projector types surplus runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorType {
    /// Qwen3-VL / Qwen3.5 / Qwen3.6 vision tower with the 2 × 2 merger.
    Qwen3VlMerger,
    /// SigLIP with Gemma 3's pooling projector.
    Gemma3,
}

impl ProjectorType {
    /// The `clip.projector_type` value.
    pub fn name(self) -> &'static str {
        match self {
            ProjectorType::Qwen3VlMerger => "qwen3vl_merger",
            ProjectorType::Gemma3 => "gemma3",
        }
    }
}

/// Bounds on the image tokens of towers whose token count follows the image size (Qwen):
/// llama.cpp's defaults are 8 and 4096.
#[derive(Clone, Copy, Debug)]
pub struct TokenLimits {
    /// Fewest image tokens: smaller images are scaled up to reach it. Must be at least 1.
    pub min_tokens: usize,
    /// Most image tokens: larger images are scaled down to fit. Must be at least
    /// `min_tokens`.
    pub max_tokens: usize,
}

impl Default for TokenLimits {
    fn default() -> TokenLimits {
        TokenLimits {
            min_tokens: 8,
            max_tokens: 4096,
        }
    }
}

/// An image as rows of the text model's input embeddings.
#[derive(Clone, Debug)]
pub struct ImageEmbeddings {
    /// Number of image tokens (rows of `data`).
    pub n_tokens: usize,
    /// Values per token (the text model's width).
    pub n_embd: usize,
    /// The token grid: `nx` columns × `ny` rows, row-major (Gemma: its pooled square).
    pub nx: usize,
    /// Rows of the token grid (see `nx`).
    pub ny: usize,
    /// `n_tokens × n_embd` values, token-major.
    pub data: Vec<f32>,
}

impl ImageEmbeddings {
    /// Row `i`.
    pub fn token(&self, i: usize) -> &[f32] {
        &self.data[i * self.n_embd..(i + 1) * self.n_embd]
    }
}

enum Tower {
    Qwen3Vl(qwen3vl::Qwen3Vl),
    Gemma3(gemma3::Gemma3),
}

/// The memory a projector needs ([`Projector::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionMemory {
    /// Bytes of weights.
    pub weights: u64,
    /// Bytes of activations for the largest image allowed.
    pub scratch: u64,
    /// Image tokens of that image.
    pub max_tokens: usize,
}

impl std::fmt::Display for VisionMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "vision tower (CPU): weights {:.1} MiB, activations up to {:.1} MiB (images of up to {} tokens)",
            mib(self.weights),
            mib(self.scratch),
            self.max_tokens
        )
    }
}

/// A loaded vision projector ("mmproj" file).
pub struct Projector {
    /// Which tower the file holds (from `clip.projector_type`).
    pub kind: ProjectorType,
    /// Bounds on the image tokens of the Qwen tower (ignored by Gemma's fixed-size one);
    /// llama.cpp's defaults when loaded; may be changed before encoding.
    pub limits: TokenLimits,
    tower: Tower,
    /// Keeps the memory map alive.
    _file: Arc<gguf::Gguf>,
}

impl Projector {
    /// Opens and loads a projector file.
    pub fn open(path: impl AsRef<Path>) -> Result<Projector, VisionError> {
        Projector::load(Arc::new(gguf::Gguf::open(path)?))
    }

    /// Loads the projector an opened GGUF file holds, checking every tensor's shape.
    pub fn load(file: Arc<gguf::Gguf>) -> Result<Projector, VisionError> {
        let arch = file.architecture().unwrap_or("").to_string();
        if arch != "clip" {
            return Err(VisionError::NotClip(arch));
        }
        // The tower's matrices keep the file's layout (no repacking for the CPU's kernels).
        let t = model::Loader::with_repack(file.clone(), false);
        let m = t.metadata();
        if m.get_bool("clip.has_vision_encoder") == Some(false) {
            return Err(VisionError::Unsupported(
                "a projector without a vision encoder (audio)".into(),
            ));
        }
        let ptype = m
            .get_str("clip.vision.projector_type")
            .or_else(|| m.get_str("clip.projector_type"))
            .ok_or_else(|| VisionError::Metadata("clip.projector_type".into(), "missing".into()))?
            .to_string();
        let hp = VisionHparams::read(m)?;
        let (kind, tower) = match ptype.as_str() {
            "qwen3vl_merger" => (
                ProjectorType::Qwen3VlMerger,
                Tower::Qwen3Vl(qwen3vl::Qwen3Vl::load(&t, hp)?),
            ),
            "gemma3" => (
                ProjectorType::Gemma3,
                Tower::Gemma3(gemma3::Gemma3::load(&t, hp)?),
            ),
            _ => return Err(VisionError::UnsupportedProjector(ptype)),
        };
        Ok(Projector {
            kind,
            limits: TokenLimits::default(),
            tower,
            _file: file,
        })
    }

    /// Chooses the attention arithmetic: f16 as llama.cpp's default flash attention (the
    /// default here too), or plain f32 as its `-fa off` (see
    /// [`VisionHparams::f16_attention`]).
    pub fn set_f16_attention(&mut self, on: bool) {
        match &mut self.tower {
            Tower::Qwen3Vl(t) => t.hp.f16_attention = on,
            Tower::Gemma3(t) => t.hp.f16_attention = on,
        }
    }

    /// What the tower needs in memory: its weights (as the file holds them) and the
    /// activations of the largest image the token limits allow. The tower runs on the CPU.
    pub fn memory(&self) -> VisionMemory {
        let weights = self._file.tensors().iter().map(|t| t.n_bytes()).sum();
        let hp = self.hparams();
        let (patches, tokens) = match &self.tower {
            Tower::Qwen3Vl(_) => {
                let merge = qwen3vl::MERGE * qwen3vl::MERGE;
                (self.limits.max_tokens * merge, self.limits.max_tokens)
            }
            Tower::Gemma3(t) => {
                let side = hp.image_size / hp.patch_size.max(1);
                (side * side, t.n_tokens())
            }
        };
        // The residual, a normed copy, Q/K/V, the attention output and the FFN's hidden
        // layer, per patch, in f32; the embeddings out.
        let per_patch = 6 * hp.n_embd + hp.n_ff;
        let scratch = (patches * per_patch + tokens * self.n_embd_out()) as u64 * 4;
        VisionMemory {
            weights,
            scratch,
            max_tokens: tokens,
        }
    }

    /// The tower's hyper-parameters.
    pub fn hparams(&self) -> &VisionHparams {
        match &self.tower {
            Tower::Qwen3Vl(t) => &t.hp,
            Tower::Gemma3(t) => &t.hp,
        }
    }

    /// Width of the embeddings (must equal the text model's).
    pub fn n_embd_out(&self) -> usize {
        match &self.tower {
            Tower::Qwen3Vl(t) => t.n_out,
            Tower::Gemma3(t) => t.n_out,
        }
    }

    /// The input size (width, height) the tower takes for a `w` × `h` image.
    pub fn input_size(&self, w: u32, h: u32) -> Result<(u32, u32), VisionError> {
        if w == 0 || h == 0 {
            return Err(VisionError::Image(format!(
                "the image has zero size ({w}×{h})"
            )));
        }
        let hp = self.hparams();
        Ok(match &self.tower {
            Tower::Qwen3Vl(_) => {
                let a = (hp.patch_size * qwen3vl::MERGE) as u64;
                let l = self.limits;
                if l.min_tokens == 0 || l.min_tokens > l.max_tokens {
                    return Err(VisionError::Image(format!(
                        "bad image token bounds {}..{}",
                        l.min_tokens, l.max_tokens
                    )));
                }
                preprocess::smart_resize(
                    w,
                    h,
                    a as u32,
                    l.min_tokens as u64 * a * a,
                    l.max_tokens as u64 * a * a,
                )
            }
            Tower::Gemma3(_) => (hp.image_size as u32, hp.image_size as u32),
        })
    }

    /// Number of image tokens an image of `w` × `h` pixels becomes.
    pub fn n_tokens(&self, w: u32, h: u32) -> Result<usize, VisionError> {
        Ok(match &self.tower {
            Tower::Qwen3Vl(t) => {
                let (iw, ih) = self.input_size(w, h)?;
                let a = (t.hp.patch_size * qwen3vl::MERGE) as u32;
                ((iw / a) * (ih / a)) as usize
            }
            Tower::Gemma3(t) => t.n_tokens(),
        })
    }

    /// Resizes, letterboxes and normalises an image for this tower.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Preprocessed, VisionError> {
        let (tw, th) = self.input_size(img.width, img.height)?;
        let filter = match self.kind {
            ProjectorType::Qwen3VlMerger => Filter::Bicubic,
            ProjectorType::Gemma3 => Filter::Bilinear,
        };
        let hp = self.hparams();
        preprocess::prepare(img, tw, th, filter, hp.mean, hp.std)
    }

    /// Runs the tower on a preprocessed image.
    pub fn encode(&self, img: &Preprocessed) -> Result<ImageEmbeddings, VisionError> {
        match &self.tower {
            Tower::Qwen3Vl(t) => t.encode(img),
            Tower::Gemma3(t) => t.encode(img),
        }
    }

    /// [`Projector::preprocess`] then [`Projector::encode`].
    pub fn embed(&self, img: &RgbImage) -> Result<ImageEmbeddings, VisionError> {
        self.encode(&self.preprocess(img)?)
    }
}
