//! Multi-token-prediction ("nextn") blocks beside the trunk (Qwen3.5): what one holds and
//! its pass, which drafts the token after next from a token and the trunk's hidden state.

use runtime::{Ops, Weight};

use crate::{Block, Loader, Model, ModelError};

/// A multi-token-prediction block: at position p it takes the token `x_p` and the trunk's
/// final normed hidden state `h` of position p − 1 (zeros at 0) and predicts `x_{p+1}`:
/// `y = eh_proj·[rms(embed(x_p))·enorm; rms(h)·hnorm]`, then one decoder block (`block`,
/// with its own KV-cache layer, same positions and RoPE), then `rms(y)·shared_head_norm` and
/// the LM head. Not run by [`Model::forward`].
pub struct Mtp {
    /// The decoder block.
    pub block: Block,
    /// `[2·n_embd → n_embd]`; input is [normed embedding; normed hidden].
    pub eh_proj: Weight,
    /// RMSNorm weight of the embedding.
    pub enorm: Vec<f32>,
    /// RMSNorm weight of the hidden state.
    pub hnorm: Vec<f32>,
    /// Final norm of the block (the trunk's `output_norm` when the file has none).
    pub shared_head_norm: Vec<f32>,
    /// Own embeddings, when the file has them (else the trunk's `token_embd`).
    pub embed_tokens: Option<Weight>,
    /// Own LM head, when the file has it (else the trunk's).
    pub shared_head_head: Option<Weight>,
}

impl Mtp {
    /// Loads the `{p}.nextn.*` tensors around `block` (block `p`'s decoder), falling back on
    /// the trunk's `output_norm` for the final norm.
    pub(crate) fn load(
        ld: &Loader,
        p: &str,
        block: Block,
        n_embd: usize,
        n_vocab: usize,
        output_norm: &[f32],
    ) -> Result<Mtp, ModelError> {
        let t = |s: &str| format!("{p}.nextn.{s}");
        let d = n_embd;
        let optional_matrix = |name: String| {
            if ld.has(&name) {
                ld.matrix(&name, d, n_vocab).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Mtp {
            block,
            eh_proj: ld.matrix(&t("eh_proj.weight"), 2 * d, d)?,
            enorm: ld.vector(&t("enorm.weight"), d)?,
            hnorm: ld.vector(&t("hnorm.weight"), d)?,
            shared_head_norm: ld
                .optional_vector(&t("shared_head_norm.weight"), d)?
                .unwrap_or_else(|| output_norm.to_vec()),
            embed_tokens: optional_matrix(t("embed_tokens.weight"))?,
            shared_head_head: optional_matrix(t("shared_head_head.weight"))?,
        })
    }

    /// One pass over the batch: token `x_p` at position `p` with `mtp.h_in` holding the
    /// hidden state of position `p − 1` (the trunk's, or the block's own `mtp.h` when
    /// drafting further); writes its KV-cache layer, `mtp.h` for every token and, for the
    /// tokens in `batch.logits`, `mtp.logits`. Touches neither the trunk's logits and hidden
    /// state nor the recurrent state.
    pub fn forward<O: Ops>(&self, m: &Model, o: &O) {
        let a = &m.acts;
        let b = a.mtp.expect("MTP buffers are declared at load");
        let (n, d, eps) = (o.batch().len(), m.hp.n_embd, m.hp.eps);
        o.embed(self.embed_tokens.as_ref().unwrap_or(&m.tok_embd), a.xn);
        o.rms_norm(n, a.xn, Some(&self.enorm), eps, d, b.e);
        o.rms_norm(n, b.h_in, Some(&self.hnorm), eps, d, a.xn);
        o.concat(n, b.e, a.xn, b.cat);
        o.matmul(n, &self.eh_proj, b.cat, a.x);
        self.block.forward(m, o);
        o.rms_norm(n, a.x, Some(&self.shared_head_norm), eps, d, b.h);
        let nl = o.batch().logits.len();
        if nl > 0 {
            o.gather_logit_rows(b.h, b.last);
            let head = self.shared_head_head.as_ref().unwrap_or(&m.output);
            o.matmul(nl, head, b.last, b.logits);
        }
    }
}
