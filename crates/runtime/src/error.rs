//! The errors of a backend, CPU or CUDA: one enum, so that a batch refused for the same
//! reason reads the same on every device, and the device's own failures beside them.

/// Why a backend could not load a model or run a pass.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// More tokens than the backend was sized for: (given, largest).
    #[error("batch of {0} tokens is larger than the {1} planned at load")]
    BatchTooLarge(usize, usize),
    /// A token's position or sequence is outside the KV cache.
    #[error("token {index}: position {pos} of sequence {seq} is outside the context ({n_ctx} positions, {n_seq} sequences)")]
    OutOfContext {
        /// The token's index in the batch.
        index: usize,
        /// Its position.
        pos: u32,
        /// Its sequence.
        seq: u32,
        /// Positions per sequence.
        n_ctx: usize,
        /// Sequences.
        n_seq: usize,
    },
    /// Too many logit rows, or one naming no token of the batch: (asked, largest).
    #[error("{0} logit rows asked for; at most {1}, each naming a token of the batch")]
    BadLogits(usize, usize),
    /// A token id outside the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    /// The positions or sequence ids are not one per token.
    #[error("forward: {tokens} tokens with {pos} positions and {seq} sequence ids")]
    BadBatch {
        /// Tokens.
        tokens: usize,
        /// Positions given.
        pos: usize,
        /// Sequence ids given.
        seq: usize,
    },
    /// Input rows that are not one per token, or wider than any buffer: (values, tokens,
    /// widest row).
    #[error("{0} input values given for a batch of {1} tokens (one row per token, at most {2} values each)")]
    BadEmbeddings(usize, usize, usize),
    /// A sequence's tokens do not continue its recurrent state.
    #[error("sequence {seq}: token at position {pos}, but its recurrent state is at position {expected} (a sequence starts at 0 or continues where it is; roll back first to go back)")]
    RecurrentPosition {
        /// The sequence.
        seq: u32,
        /// The token's position.
        pos: u32,
        /// Where the state is.
        expected: u32,
    },
    /// A rollback the recurrent state cannot make.
    #[error("sequence {seq}: cannot roll back to {len} positions: {reason}")]
    Rollback {
        /// The sequence.
        seq: u32,
        /// The length asked for.
        len: usize,
        /// Why not.
        reason: String,
    },
    /// An operation that could not run (which op, and why: shapes, a missing weight).
    #[error("{op}: {reason}")]
    Op {
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
    /// The CUDA driver failed.
    #[error("CUDA: {0}")]
    Device(String),
    /// The GPU's memory does not hold what was asked.
    #[error("not enough GPU memory: {0}")]
    OutOfMemory(String),
    /// A model the device cannot run (a weight type or shape without a kernel).
    #[error("{0}")]
    Unsupported(String),
}
