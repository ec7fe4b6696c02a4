//! Model architectures: which tensors a GGUF file of each family holds, and its forward
//! pass written against the runtime's [`Ops`], so it runs on any device. One file per family.

mod blocks;
pub mod gemma3;
mod hparams;
pub mod llama;
pub mod qwen2;
pub mod qwen3;
pub mod qwen35;
mod weights;

use std::sync::Arc;

use runtime::{Act, Attention, DeltaNet, Ops, Plan, Rollback, Rope, Weight};

pub use hparams::Hparams;
pub use weights::Loader;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unsupported architecture {0:?}: surplus runs llama, qwen2, qwen3, gemma3 and qwen35")]
    UnsupportedArchitecture(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("the file has no tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    BadShape {
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
    #[error("metadata {0:?}: {1}")]
    BadMetadata(String, String),
}

/// The architecture family, which picks the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    /// Qwen3.5/3.6 dense: Gated DeltaNet and gated attention ([`qwen35`]).
    Qwen35,
}

/// The weights of one transformer block. Optional parts are present only in the families
/// that use them.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    /// Q/K/V biases (Qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm of the attention output before the residual add (Gemma 3).
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
    /// RMSNorm of the FFN output before the residual add (Gemma 3).
    pub post_ffn_norm: Option<Vec<f32>>,
    /// This layer's RoPE (Gemma 3's local and global layers differ).
    pub rope: Rope,
    /// This layer's attention shape, scale and window.
    pub attn: Attention,
}

/// The activation buffers of a forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Acts {
    /// The residual stream.
    pub x: Act,
    /// Normalized input of a sub-block.
    pub xn: Act,
    pub q: Act,
    pub k: Act,
    pub v: Act,
    /// Attention output (all heads).
    pub attn: Act,
    /// Output of a sub-block, before the residual add.
    pub out: Act,
    pub gate: Act,
    pub up: Act,
    /// Final hidden states of the tokens whose logits are wanted.
    pub last: Act,
    /// Logits.
    pub logits: Act,
}

/// A loaded model: hyper-parameters, weights over the memory-mapped file, buffer plan.
pub struct Model {
    pub family: Family,
    pub hp: Hparams,
    pub tok_embd: Weight,
    pub output_norm: Vec<f32>,
    /// The LM head (the embedding matrix itself when tied).
    pub output: Weight,
    /// The transformer blocks (empty for the hybrid family, whose blocks are in `hybrid`).
    pub layers: Vec<Layer>,
    /// The blocks, multi-token-prediction heads and extra buffers of the hybrid family
    /// (`qwen35`).
    pub hybrid: Option<Box<qwen35::Hybrid>>,
    /// Multiplier of the embeddings (Gemma: √n_embd).
    pub embd_scale: Option<f32>,
    /// `cap × tanh(logit / cap)` on the final logits.
    pub final_softcap: Option<f32>,
    pub acts: Acts,
    plan: Plan,
    /// Keeps the memory map alive for the weights.
    _file: Arc<gguf::Gguf>,
}

impl Model {
    /// Loads the model a GGUF file holds. `max_logit_rows` is how many tokens of one batch
    /// may ask for logits (1 for plain generation; more for batching and perplexity).
    pub fn load(file: Arc<gguf::Gguf>, max_logit_rows: usize) -> Result<Model, ModelError> {
        Model::load_with(file, max_logit_rows, true)
    }

    /// [`Model::load`], repacking matrices for the CPU only when `repack` (a model for a GPU
    /// keeps the file's layout, which its kernels read).
    pub fn load_with(
        file: Arc<gguf::Gguf>,
        max_logit_rows: usize,
        repack: bool,
    ) -> Result<Model, ModelError> {
        let arch = file
            .architecture()
            .ok_or_else(|| {
                ModelError::BadMetadata("general.architecture".into(), "missing".into())
            })?
            .to_string();
        let loader = Loader::with_repack(file.clone(), repack);
        let family = match arch.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma3" => Family::Gemma3,
            "qwen35" => Family::Qwen35,
            "qwen35moe" => {
                return Err(ModelError::Unsupported(
                    "architecture \"qwen35moe\" (Qwen3.5/3.6 mixture of experts) is not yet \
                     supported; the dense \"qwen35\" is"
                        .into(),
                ))
            }
            _ => return Err(ModelError::UnsupportedArchitecture(arch)),
        };
        let mut plan = Plan::new();
        let parts = match family {
            Family::Llama => llama::load(&loader)?,
            Family::Qwen2 => qwen2::load(&loader)?,
            Family::Qwen3 => qwen3::load(&loader)?,
            Family::Gemma3 => gemma3::load(&loader)?,
            Family::Qwen35 => qwen35::load(&loader, &mut plan, max_logit_rows)?,
        };
        let hp = parts.hp;
        let q_dim = hp.n_head * hp.head_dim;
        let acts = Acts {
            x: plan.act(hp.n_embd),
            xn: plan.act(hp.n_embd),
            q: plan.act(q_dim),
            k: plan.act(hp.kv_dim()),
            v: plan.act(hp.kv_dim()),
            attn: plan.act(q_dim),
            out: plan.act(hp.n_embd),
            gate: plan.act(hp.n_ff),
            up: plan.act(hp.n_ff),
            last: plan.act_rows(hp.n_embd, max_logit_rows),
            logits: plan.act_rows(hp.n_vocab, max_logit_rows),
        };
        Ok(Model {
            family,
            hp,
            tok_embd: parts.tok_embd,
            output_norm: parts.output_norm,
            output: parts.output,
            layers: parts.layers,
            hybrid: parts.hybrid,
            embd_scale: parts.embd_scale,
            final_softcap: parts.final_softcap,
            acts,
            plan,
            _file: file,
        })
    }

    /// The activation buffers to allocate.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs the model on the batch the ops carry; logits land in `acts.logits`, one row per
    /// entry of `batch.logits`.
    pub fn forward<O: Ops>(&self, o: &O) {
        self.forward_layers(o, 0..self.hp.n_layer);
    }

    /// Part of the forward pass: blocks `layers` only, with the embeddings when it starts at
    /// 0 and the final norm and head when it reaches the last block; the residual stream
    /// (`acts.x`) carries over between parts. A model split across devices runs its first
    /// part on one and the rest on the other, copying `acts.x` in between.
    pub fn forward_layers<O: Ops>(&self, o: &O, layers: std::ops::Range<usize>) {
        match self.family {
            Family::Llama | Family::Qwen2 | Family::Qwen3 => llama::forward(self, o, layers),
            Family::Gemma3 => gemma3::forward(self, o, layers),
            Family::Qwen35 => qwen35::forward(self, o, layers),
        }
    }

    /// KV-cache layers and recurrent layers used by the first `n` blocks (the part of a split
    /// model on its first device).
    pub fn state_layers_before(&self, n: usize) -> (usize, usize) {
        match &self.hybrid {
            None => (n.min(self.hp.n_layer), 0),
            Some(h) => h.blocks.iter().take(n).fold((0, 0), |(k, r), b| match b {
                qwen35::Block::Attention { .. } => (k + 1, r),
                qwen35::Block::DeltaNet { .. } => (k, r + 1),
            }),
        }
    }

    /// Layers the KV cache needs: every block, or for the hybrid family its attention
    /// layers and multi-token-prediction blocks.
    pub fn kv_layers(&self) -> usize {
        self.hybrid.as_ref().map_or(self.hp.n_layer, |h| h.n_kv)
    }

    /// Whether attention turns by multi-section rotary positions (Qwen3.5's M-RoPE), where
    /// an image's rows take 2-D positions (see [`runtime::Batch::rope_pos`]).
    pub fn multi_section_rope(&self) -> bool {
        let blocks = self.hybrid.iter().flat_map(|h| &h.blocks);
        blocks.into_iter().any(|b| match b {
            qwen35::Block::Attention { layer, .. } => layer.rope.section.iter().any(|&s| s != 0),
            qwen35::Block::DeltaNet { .. } => false,
        })
    }

    /// The recurrent layers whose state the device must keep per sequence: how many, and
    /// their shape (`None` when the model has none).
    pub fn recurrent(&self) -> Option<(usize, DeltaNet)> {
        self.hybrid
            .as_ref()
            .filter(|h| h.n_recurrent > 0)
            .map(|h| (h.n_recurrent, h.net.clone()))
    }

    /// The buffer holding the final normed hidden state of every token of the last batch
    /// (one row per token, `n_embd` wide), for the families that produce it (`qwen35`: the
    /// input of its multi-token-prediction head).
    pub fn hidden(&self) -> Option<Act> {
        self.hybrid.as_ref().map(|h| h.acts.h)
    }

    /// Multi-token-prediction blocks the file has (`qwen35`'s `nextn_predict_layers`).
    pub fn n_mtp(&self) -> usize {
        self.hybrid.as_ref().map_or(0, |h| h.mtp.len())
    }

    /// The buffers of an MTP pass: (input `h` rows, output `h` rows, logits).
    pub fn mtp_acts(&self) -> Option<(Act, Act, Act)> {
        self.hybrid
            .as_ref()
            .map(|h| (h.acts.mtp_h_in, h.acts.mtp_h, h.acts.mtp_logits))
    }

    /// One pass of MTP block `k` over the batch the ops carry ([`qwen35::mtp_forward`]).
    pub fn mtp_forward<O: Ops>(&self, o: &O, k: usize) {
        qwen35::mtp_forward(self, o, k);
    }

    /// Cuts sequence `seq`'s state back to its first `len` positions: speculative decoding
    /// calls it after rejecting drafts. KV-cache entries past `len` are never read before
    /// being written again, so the attention-only families have nothing to undo; the hybrid
    /// family's recurrent state is restored by the device ([`Rollback`]), to any position of
    /// the sequence's latest batch (a verification batch).
    pub fn rollback<B: Rollback>(
        &self,
        backend: &mut B,
        seq: u32,
        len: usize,
    ) -> Result<(), B::Error> {
        match self.family {
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => Ok(()),
            Family::Qwen35 => backend.rollback(seq, len),
        }
    }

    /// Parameter count (all tensors used).
    pub fn n_params(&self) -> usize {
        let w = |w: &Weight| w.rows * w.cols;
        let mut n = w(&self.tok_embd) + self.output_norm.len();
        if !std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr()) {
            n += w(&self.output);
        }
        for l in &self.layers {
            n += w(&l.wq) + w(&l.wk) + w(&l.wv) + w(&l.wo) + w(&l.gate) + w(&l.up) + w(&l.down);
        }
        if let Some(h) = &self.hybrid {
            n += h.n_params();
        }
        n
    }
}

/// What a family's loader returns.
pub(crate) struct Parts {
    pub hp: Hparams,
    pub tok_embd: Weight,
    pub output_norm: Vec<f32>,
    pub output: Weight,
    pub layers: Vec<Layer>,
    pub embd_scale: Option<f32>,
    pub final_softcap: Option<f32>,
    pub hybrid: Option<Box<qwen35::Hybrid>>,
}
