//! Model architectures: which tensors a GGUF file of each family holds, and its forward
//! pass written against the runtime's [`Ops`], so it runs on any device. One file per family.

mod acts;
mod blocks;
mod gemma3;
mod hparams;
mod llama;
mod mixer;
mod mtp;
mod qwen2;
mod qwen3;
mod qwen35;
mod weights;

use std::sync::Arc;

use runtime::{Act, DeltaNet, Ops, Plan, Rollback, Weight};

pub use acts::{Acts, DeltaActs, GatedActs, MtpActs};
pub use blocks::{Activation, Block, Ffn};
pub use hparams::Hparams;
pub use mixer::{AttentionMixer, DeltaNetMixer, Mixer};
pub use mtp::Mtp;
pub use weights::{Loader, WeightError};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `general.architecture` names a family surplus does not run.
    #[error("unsupported architecture {0:?}: surplus runs llama, qwen2, qwen3, gemma3 and qwen35")]
    UnsupportedArchitecture(String),
    /// A feature of the file surplus does not run yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A tensor is missing or malformed.
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// A metadata key (named) is missing or malformed.
    #[error("metadata {0:?}: {1}")]
    BadMetadata(String, String),
}

/// The architecture family, which picks the loader (and the engine's image tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama and every `llama` GGUF (SmolLM2, ...).
    Llama,
    /// Qwen2 / Qwen2.5.
    Qwen2,
    /// Qwen3 dense.
    Qwen3,
    /// Gemma 3.
    Gemma3,
    /// Qwen3.5/3.6 dense: Gated DeltaNet and gated attention, MTP blocks.
    Qwen35,
}

/// A loaded model: hyper-parameters, weights over the memory-mapped file, buffer plan.
pub struct Model {
    /// The architecture family.
    pub family: Family,
    /// Hyper-parameters (`n_layer`: the trunk's blocks, MTP blocks not counted).
    pub hp: Hparams,
    /// The token embeddings.
    pub tok_embd: Weight,
    /// RMSNorm weight of the final hidden state.
    pub output_norm: Vec<f32>,
    /// The LM head (the embedding matrix itself when tied).
    pub output: Weight,
    /// The trunk's blocks, in order.
    pub blocks: Vec<Block>,
    /// Multi-token-prediction blocks (`qwen35`'s `nextn_predict_layers`), in order; their
    /// KV-cache layers follow the trunk's.
    pub mtp: Vec<Mtp>,
    /// Multiplier of the embeddings (Gemma: √n_embd).
    pub embd_scale: Option<f32>,
    /// `cap × tanh(logit / cap)` on the final logits.
    pub final_softcap: Option<f32>,
    /// The activation buffers of a pass.
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
        let parts = match family {
            Family::Llama => llama::load(&loader)?,
            Family::Qwen2 => qwen2::load(&loader)?,
            Family::Qwen3 => qwen3::load(&loader)?,
            Family::Gemma3 => gemma3::load(&loader)?,
            Family::Qwen35 => qwen35::load(&loader)?,
        };
        let all = || {
            parts
                .blocks
                .iter()
                .chain(parts.mtp.iter().map(|m| &m.block))
        };
        let needs = acts::Needs {
            gated: all().any(|b| b.attention().is_some_and(|a| a.gated)),
            delta: all().find_map(|b| Some(b.delta_net()?.net.clone())),
            hidden: parts.keep_hidden || !parts.mtp.is_empty(),
            mtp: !parts.mtp.is_empty(),
        };
        let mut plan = Plan::new();
        let acts = Acts::declare(&mut plan, &parts.hp, &needs, max_logit_rows);
        Ok(Model {
            family,
            hp: parts.hp,
            tok_embd: parts.tok_embd,
            output_norm: parts.output_norm,
            output: parts.output,
            blocks: parts.blocks,
            mtp: parts.mtp,
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
        blocks::forward(self, o, layers);
    }

    /// KV-cache layers and recurrent layers used by the first `n` blocks (the part of a split
    /// model on its first device).
    pub fn state_layers_before(&self, n: usize) -> (usize, usize) {
        self.blocks
            .iter()
            .take(n)
            .fold((0, 0), |(k, r), b| match b.mixer {
                Mixer::Attention(_) => (k + 1, r),
                Mixer::DeltaNet(_) => (k, r + 1),
            })
    }

    /// Layers the KV cache needs: one per attention mixer, the trunk's then the MTP blocks'.
    pub fn kv_layers(&self) -> usize {
        let mtp = self.mtp.iter().map(|m| &m.block);
        self.blocks
            .iter()
            .chain(mtp)
            .filter(|b| b.attention().is_some())
            .count()
    }

    /// Whether attention turns by multi-section rotary positions (Qwen3.5's M-RoPE), where
    /// an image's rows take 2-D positions (see [`runtime::Batch::rope_pos`]).
    pub fn multi_section_rope(&self) -> bool {
        let mut attention = self.blocks.iter().filter_map(Block::attention);
        attention.any(|a| a.rope.section.iter().any(|&s| s != 0))
    }

    /// The matrices a prompt chunk's pass multiplies through the trunk (the LM head, which
    /// only sees logit rows, and MTP blocks left out).
    pub fn matmul_weights(&self) -> Vec<runtime::Weight> {
        let mut batch = runtime::Batch::one_sequence(&[0], 0, 0, false);
        batch.logits.clear();
        let c = runtime::collect::Collect::new(batch);
        self.forward_layers(&c, 0..self.hp.n_layer);
        c.finish().matmuls
    }

    /// The recurrent layers whose state the device must keep per sequence: how many, and
    /// their shape (`None` when the model has none).
    pub fn recurrent(&self) -> Option<(usize, DeltaNet)> {
        let mut nets = self.blocks.iter().filter_map(Block::delta_net);
        let net = nets.next()?.net.clone();
        Some((1 + nets.count(), net))
    }

    /// The buffer holding the final normed hidden state of every token of the last batch
    /// (one row per token, `n_embd` wide), for the models that keep it (`qwen35`: the
    /// input of its multi-token-prediction blocks).
    pub fn hidden(&self) -> Option<Act> {
        self.acts.hidden
    }

    /// Multi-token-prediction blocks the file has (`qwen35`'s `nextn_predict_layers`).
    pub fn n_mtp(&self) -> usize {
        self.mtp.len()
    }

    /// The buffers of an MTP pass: (input `h` rows, output `h` rows, logits).
    pub fn mtp_acts(&self) -> Option<(Act, Act, Act)> {
        self.acts.mtp.map(|b| (b.h_in, b.h, b.logits))
    }

    /// One pass of MTP block `k` over the batch the ops carry ([`Mtp::forward`]); nothing
    /// when there is no such block.
    pub fn mtp_forward<O: Ops>(&self, o: &O, k: usize) {
        if let Some(mtp) = self.mtp.get(k) {
            mtp.forward(self, o);
        }
    }

    /// Cuts sequence `seq`'s state back to its first `len` positions: speculative decoding
    /// calls it after rejecting drafts. KV-cache entries past `len` are never read before
    /// being written again, so a model without recurrent state has nothing to undo; a
    /// recurrent state is restored by the device ([`Rollback`]), to any position of the
    /// sequence's latest batch (a verification batch).
    pub fn rollback<B: Rollback>(
        &self,
        backend: &mut B,
        seq: u32,
        len: usize,
    ) -> Result<(), B::Error> {
        match self.recurrent() {
            None => Ok(()),
            Some(_) => backend.rollback(seq, len),
        }
    }

    /// Parameter count (all tensors used).
    pub fn n_params(&self) -> usize {
        let w = |w: &Weight| w.rows * w.cols;
        let mut n = w(&self.tok_embd) + self.output_norm.len();
        if !std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr()) {
            n += w(&self.output);
        }
        n += self.blocks.iter().map(Block::n_params).sum::<usize>();
        for m in &self.mtp {
            n += m.block.n_params() + w(&m.eh_proj);
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
    pub blocks: Vec<Block>,
    pub mtp: Vec<Mtp>,
    pub embd_scale: Option<f32>,
    pub final_softcap: Option<f32>,
    /// Whether the head keeps every token's final normed hidden state ([`Acts::hidden`]).
    pub keep_hidden: bool,
}

impl Parts {
    /// The parts of a model of `blocks`, with the embeddings, final norm and LM head loaded
    /// and no extras.
    pub(crate) fn new(ld: &Loader, hp: Hparams, blocks: Vec<Block>) -> Result<Parts, ModelError> {
        let (tok_embd, output_norm, output) = blocks::load_ends(ld, &hp)?;
        Ok(Parts {
            hp,
            tok_embd,
            output_norm,
            output,
            blocks,
            mtp: Vec::new(),
            embd_scale: None,
            final_softcap: None,
            keep_hidden: false,
        })
    }

    /// These parts when every block has what `has` checks, else the error naming the first
    /// block's tensor `what` as missing.
    pub(crate) fn require(
        self,
        has: impl Fn(&Block) -> bool,
        what: &str,
    ) -> Result<Parts, ModelError> {
        match self.blocks.iter().position(|b| !has(b)) {
            None => Ok(self),
            Some(il) => Err(WeightError::MissingTensor(format!("blk.{il}.{what}")).into()),
        }
    }
}
