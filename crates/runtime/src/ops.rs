//! What a model's forward pass asks of a device: the operations, activation buffers planned
//! at load, the batch being evaluated; the CPU and CUDA backends implement it.

use crate::tensor::Weight;
use std::ops::Range;

/// Weights repacked at load ([`crate::Layout::Rows16`]) take one kernel for any batch. For
/// the others, a prompt chunk (consecutive positions of one sequence, see
/// [`Batch::prompt_chunk`]) of this many tokens or more is multiplied by a GEMM (the CPU's
/// int8 GEMM or dequantized blocks, cuBLAS on f16 tiles on the GPU); every other batch
/// (decode, speculative verification, several sequences at once) dots each weight row with
/// each token's 8-bit activations, so that a token's result never depends on what else
/// shares its batch.
pub const GEMM_MIN_TOKENS: usize = 8;

/// An activation buffer planned at load: `width` f32 values per token, room for the largest
/// batch. The device owns the memory; model code only holds these handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Act {
    pub(crate) id: u32,
    /// Values per token.
    pub width: usize,
}

/// The activation buffers a model needs, declared once at load.
#[derive(Default, Debug, Clone)]
pub struct Plan {
    pub(crate) widths: Vec<usize>,
    /// Rows of each buffer; `None` means one per token of the largest batch.
    pub(crate) rows: Vec<Option<usize>>,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Plan {
        Plan::default()
    }

    /// Declares a buffer of `width` values per token.
    pub fn act(&mut self, width: usize) -> Act {
        self.widths.push(width);
        self.rows.push(None);
        Act {
            id: (self.widths.len() - 1) as u32,
            width,
        }
    }

    /// Declares a buffer of `width` values per row with room for `rows` rows whatever the
    /// batch size (the logits, wanted for a few tokens of a batch only).
    pub fn act_rows(&mut self, width: usize, rows: usize) -> Act {
        let a = self.act(width);
        self.rows[a.id as usize] = Some(rows.max(1));
        a
    }

    /// Bytes needed for batches of up to `max_batch` tokens.
    pub fn bytes(&self, max_batch: usize) -> usize {
        self.widths
            .iter()
            .zip(&self.rows)
            .map(|(w, r)| w * r.unwrap_or(max_batch))
            .sum::<usize>()
            * 4
    }

    /// The widest buffer of one row per token (at least 32): it bounds every matmul's input
    /// and a batch's input rows; the buffers of a few rows (the logits) are outputs only.
    pub fn max_token_width(&self) -> usize {
        self.widths
            .iter()
            .zip(&self.rows)
            .filter(|(_, rows)| rows.is_none())
            .map(|(&w, _)| w)
            .max()
            .unwrap_or(1)
            .max(32)
    }

    /// The fewest rows any fixed-size buffer has (how many logit rows a batch may ask for).
    pub fn min_fixed_rows(&self) -> Option<usize> {
        self.rows.iter().flatten().copied().min()
    }
}

/// The tokens of one forward pass: each with its position and the sequence it belongs to.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub pos: Vec<u32>,
    /// Sequence (KV-cache slot) of each token.
    pub seq: Vec<u32>,
    /// Indices (into `tokens`) of the tokens whose logits are wanted, in order.
    pub logits: Vec<u32>,
    /// Input rows given directly (an image's embeddings), one row of the model's width per
    /// token: [`Ops::embed`] copies them instead of looking `tokens` up (whose ids are then
    /// only placeholders), and models skip their token-embedding scale. Empty: token ids.
    pub embd: Vec<f32>,
    /// The tokens of this batch attend to each other both ways (every key of their sequence
    /// up to the batch's last position, not only earlier ones): Gemma 3's image block.
    pub non_causal: bool,
    /// Rotary positions (t, h, w) of each token for multi-section RoPE (an image's rows in a
    /// Qwen3.5 sequence, and the text after it, which resumes at a smaller position than its
    /// cache slot). Empty: all three are `pos`. `pos` stays the cache slot and causal order.
    pub rope_pos: Vec<[u32; 3]>,
}

impl Batch {
    /// Tokens of one sequence at consecutive positions from `start`, logits for the last.
    pub fn one_sequence(tokens: &[u32], start: u32, seq: u32, all_logits: bool) -> Batch {
        let n = tokens.len() as u32;
        Batch {
            tokens: tokens.to_vec(),
            pos: (start..start + n).collect(),
            seq: vec![seq; tokens.len()],
            logits: if all_logits {
                (0..n).collect()
            } else {
                n.checked_sub(1).into_iter().collect()
            },
            embd: Vec::new(),
            non_causal: false,
            rope_pos: Vec::new(),
        }
    }

    /// Refills the batch in place (its buffers kept: no allocation once they are large
    /// enough) with `tokens` of sequence `seq` at positions `start..`, logits for the rows
    /// in `logits`; token ids, causal, positions as slots.
    pub fn refill(&mut self, tokens: &[u32], start: u32, seq: u32, logits: Range<u32>) {
        self.refill_placeholders(tokens.len(), start, seq, logits);
        self.tokens.copy_from_slice(tokens);
    }

    /// [`Batch::refill`] with `n` placeholder ids (0), for input rows the caller puts in
    /// `embd`.
    pub fn refill_placeholders(&mut self, n: usize, start: u32, seq: u32, logits: Range<u32>) {
        self.tokens.clear();
        self.tokens.resize(n, 0);
        self.pos.clear();
        self.pos.extend(start..start + n as u32);
        self.seq.clear();
        self.seq.resize(n, seq);
        self.logits.clear();
        self.logits.extend(logits);
        self.embd.clear();
        self.non_causal = false;
        self.rope_pos.clear();
    }

    /// The logit rows `n - 1..n` when `last`, else none: the last token's.
    pub fn last_row(n: usize, last: bool) -> Range<u32> {
        let n = n as u32;
        if last {
            n.saturating_sub(1)..n
        } else {
            n..n
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// When the batch is `min_tokens` or more consecutive positions of one sequence (a
    /// prompt chunk, which devices compute with their prompt kernels): that sequence and
    /// the first position.
    pub fn prompt_chunk(&self, min_tokens: usize) -> Option<(u32, u32)> {
        if self.len() < min_tokens.max(1) {
            return None;
        }
        let (seq, p0) = (self.seq[0], self.pos[0]);
        let consecutive = self
            .seq
            .iter()
            .zip(&self.pos)
            .enumerate()
            .all(|(i, (&s, &p))| s == seq && p == p0 + i as u32);
        consecutive.then_some((seq, p0))
    }

    /// The end (exclusive) of the positions token `t` attends to: its own position and the
    /// earlier ones, or in a [`Batch::non_causal`] batch every position of its sequence up
    /// to the batch's last one.
    pub fn key_end(&self, t: usize) -> u32 {
        if !self.non_causal {
            return self.pos[t] + 1;
        }
        let s = self.seq[t];
        let same = self.seq.iter().zip(&self.pos).filter(|(&q, _)| q == s);
        same.map(|(_, &p)| p).max().unwrap_or(self.pos[t]) + 1
    }
}

/// Which elements RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): llama-family GGUFs.
    Normal,
    /// Halves (i, i + n_rot/2): NeoX, Qwen, Gemma.
    Neox,
}

/// Rotary position embedding of one attention layer.
#[derive(Clone, Debug)]
pub struct Rope {
    /// Pairing.
    pub mode: RopeMode,
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    /// `theta_i = position × freq_scale × inv_freq_i`, with `inv_freq_i = base^(-2i/n_rot)`.
    pub inv_freq: Vec<f32>,
    /// Linear position scaling (1 / scaling factor).
    pub freq_scale: f32,
    /// Multi-section RoPE: which component of the token's rotary position (0 = t, 1 = h,
    /// 2 = w; see [`Batch::rope_pos`]) turns each pair. Empty: every pair turns by `pos`.
    pub section: Vec<u8>,
}

impl Rope {
    /// RoPE with frequency base `base`.
    pub fn new(mode: RopeMode, n_rot: usize, base: f32, freq_scale: f32) -> Rope {
        let inv_freq = (0..n_rot / 2)
            .map(|i| (base as f64).powf(-2.0 * i as f64 / n_rot as f64) as f32)
            .collect();
        Rope {
            mode,
            n_rot,
            inv_freq,
            freq_scale,
            section: Vec::new(),
        }
    }
}

/// How one layer attends.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (query heads share them in groups).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Multiplier of q·k.
    pub scale: f32,
    /// A key is hidden when query position − key position >= window (sliding-window layers).
    pub window: Option<u32>,
    /// `cap × tanh(score / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
}

/// Shape of a Gated DeltaNet mixer (the linear-attention layers of Qwen3.5): a causal
/// depthwise convolution over `[q; k; v]`, then the gated delta rule per value head.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaNet {
    /// Query and key heads.
    pub n_k_heads: usize,
    /// Value heads; value head j reads key (and query) head `j mod n_k_heads`.
    pub n_v_heads: usize,
    /// Values per query and key head.
    pub head_k: usize,
    /// Values per value head.
    pub head_v: usize,
    /// Taps of the convolution (it keeps the last `conv_kernel - 1` inputs as state).
    pub conv_kernel: usize,
    /// Epsilon of the L2 norms of queries and keys: `x / sqrt(Σx² + eps)`.
    pub eps: f32,
}

impl DeltaNet {
    /// Channels of the convolution: q, k, then v.
    pub fn conv_channels(&self) -> usize {
        2 * self.n_k_heads * self.head_k + self.n_v_heads * self.head_v
    }

    /// Values of the delta-rule output (and of its gate z): all value heads.
    pub fn value_dim(&self) -> usize {
        self.n_v_heads * self.head_v
    }

    /// Floats of one sequence's convolution state.
    pub fn conv_state_len(&self) -> usize {
        (self.conv_kernel.max(1) - 1) * self.conv_channels()
    }

    /// Floats of one sequence's delta-rule state: a `head_v × head_k` matrix per value head.
    pub fn state_len(&self) -> usize {
        self.n_v_heads * self.head_v * self.head_k
    }
}

/// Per-sequence state a device keeps between passes beyond the KV cache (the recurrent state
/// of Gated DeltaNet layers), which speculative decoding must roll back.
pub trait Rollback {
    /// Why a rollback could not be done.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Brings sequence `seq` back to its state after its first `len` positions.
    fn rollback(&mut self, seq: u32, len: usize) -> Result<(), Self::Error>;
}

/// The operations of a forward pass. Every buffer holds one row of `act.width` values per
/// token; `n` says how many rows an operation covers (the batch, or fewer for logits).
pub trait Ops {
    /// The batch being evaluated.
    fn batch(&self) -> &Batch;
    /// Row `i` of `out` = dequantized row `batch.tokens[i]` of `w` (embedding lookup), or
    /// row `i` of `batch.embd` when the batch carries its input rows.
    fn embed(&self, w: &Weight, out: Act);
    /// Each row of `row_len` values (a token's vector, or one head of it): RMS-normalized
    /// and multiplied by `w` (length `row_len`) when given.
    fn rms_norm(&self, n: usize, x: Act, w: Option<&[f32]>, eps: f32, row_len: usize, out: Act);
    /// `out = x × wᵀ` for `n` rows (`w` is rows × cols, x rows have `cols` values).
    fn matmul(&self, n: usize, w: &Weight, x: Act, out: Act);
    /// Adds `b` to every row.
    fn add_bias(&self, n: usize, x: Act, b: &[f32]);
    /// Rotates the first `n_heads` heads of each row by its token's position.
    fn rope(&self, x: Act, n_heads: usize, head_dim: usize, rope: &Rope);
    /// Writes the batch's keys and values into layer `layer` of the cache, then attends:
    /// row i of `out` = attention of query row i over its sequence's keys up to its position
    /// (up to the batch's last position in its sequence when `batch.non_causal`).
    fn attention(&self, layer: usize, q: Act, k: Act, v: Act, spec: &Attention, out: Act);
    /// `out = silu(gate) × up`.
    fn swiglu(&self, n: usize, gate: Act, up: Act, out: Act);
    /// `out = gelu_tanh(gate) × up`.
    fn geglu(&self, n: usize, gate: Act, up: Act, out: Act);
    /// `out = a + b`.
    fn add(&self, n: usize, a: Act, b: Act, out: Act);
    /// `x *= s`.
    fn scale(&self, n: usize, x: Act, s: f32);
    /// Row i of `out` = row `batch.logits[i]` of `x`.
    fn gather_logit_rows(&self, x: Act, out: Act);
    /// `x = cap × tanh(x / cap)`.
    fn softcap(&self, n: usize, x: Act, cap: f32);
    /// Each group of `2 × half` values of a row of `x`: the first `half` go to `a`, the next
    /// `half` to `b` (a query projection whose heads are followed by their output gate).
    fn unzip(&self, n: usize, x: Act, half: usize, a: Act, b: Act);
    /// `out = x × sigmoid(gate)`.
    fn sigmoid_mul(&self, n: usize, x: Act, gate: Act, out: Act);
    /// Row t of `out` = row t of `a` followed by row t of `b` (`out.width = a.width + b.width`).
    fn concat(&self, n: usize, a: Act, b: Act, out: Act);
    /// Each piece of `w.len()` values of a row (one head): `out = rms_norm(x) × w × silu(z)`.
    fn gated_rms_norm(&self, n: usize, x: Act, z: Act, w: &[f32], eps: f32, out: Act);
    /// The gates of the delta rule, in place, one value per value head:
    /// `beta = sigmoid(beta)` and `alpha = softplus(alpha + dt_bias) × a` (the log-decay g).
    fn delta_gates(&self, n: usize, alpha: Act, beta: Act, dt_bias: &[f32], a: &[f32]);
    /// Causal depthwise convolution, then SiLU, for recurrent layer `layer`: channel c of each
    /// token's output is `silu(Σ_j w[c·K + j] · x_{t−K+1+j}[c])` (K = `net.conv_kernel`,
    /// oldest tap first), where inputs before the batch come from the token's sequence's
    /// convolution state (zeros when the sequence starts at position 0). Afterwards that
    /// state holds the sequence's last K − 1 inputs.
    fn conv_silu(&self, layer: usize, x: Act, w: &[f32], net: &DeltaNet, out: Act);
    /// The gated delta rule of recurrent layer `layer`. `qkv` holds each token's convolved
    /// `[q; k; v]`; q and k are L2-normalized per head (q also scaled by 1/sqrt(head_k)), then
    /// per value head, from the sequence's state S (zero at position 0):
    /// `S ← e^g·S; S ← S + β·(v − S·k)·kᵀ; out = S·q`. `g` and `beta` hold one value per
    /// value head (see [`Ops::delta_gates`]). A prompt chunk runs in chunk-parallel form,
    /// other batches token by token; several sequences may share a batch.
    fn gated_delta(&self, layer: usize, qkv: Act, g: Act, beta: Act, net: &DeltaNet, out: Act);
}
