//! Which positions a sequence's recurrent state can return to: the bookkeeping the CPU and
//! CUDA backends share (each keeps the inputs and replays them with its own kernels).
//!
//! Both keep two copies of every state. A pass reads the current copy and writes the other,
//! so the copy it read is a snapshot of the state before the sequence's latest batch. For a
//! batch of up to [`ROLLBACK_TOKENS`] tokens the pass also keeps each token's inputs to the
//! recurrence, and a rollback to a position inside that batch replays them on the snapshot.

use crate::ops::DeltaNet;

/// A sequence can be rolled back to any position inside its latest batch when that batch
/// gave it at most this many tokens (speculative verification: the last token and up to six
/// drafts).
pub const ROLLBACK_TOKENS: usize = 8;

/// Whether a pass keeps the recurrence inputs of a sequence given `n` tokens, so that it
/// can be rolled back inside them.
pub fn keeps_inputs(n: usize) -> bool {
    n <= ROLLBACK_TOKENS
}

/// Floats kept per token for a rollback: the convolution's input and output, g and β.
pub fn replay_width(net: &DeltaNet) -> usize {
    2 * net.conv_channels() + 2 * net.n_v_heads
}

/// One sequence: the positions its state covers and its latest batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    len: u32,
    /// The latest batch's first position and tokens.
    p0: u32,
    n: u32,
    /// The latest batch started at position 0: its snapshot is the zero state.
    reset: bool,
    /// The latest batch's inputs were kept.
    replayable: bool,
}

/// What a rollback has to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Tokens of the latest batch to replay on its snapshot.
    pub tokens: usize,
    /// The snapshot is the zero state (the batch started the sequence).
    pub from_zero: bool,
}

impl Window {
    /// Positions the state covers: the next batch starts here (or at 0, a new sequence).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the state covers no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A state put back from a saved copy (a prefix cache's checkpoint) covering `len`
    /// positions: the next batch continues there, and nothing before it can be returned to.
    pub fn restored(len: u32) -> Window {
        Window {
            len,
            p0: len,
            n: 0,
            reset: false,
            replayable: false,
        }
    }

    /// After a pass gave the sequence `n` tokens from position `p0`.
    pub fn advance(&mut self, p0: u32, n: u32) {
        *self = Window {
            len: p0 + n,
            p0,
            n,
            reset: p0 == 0,
            replayable: keeps_inputs(n as usize),
        };
    }

    /// What bringing the state back to `len` positions takes: nothing (`None`) when it
    /// covers `len` already, a replay when `len` lies in the latest batch, and otherwise an
    /// error that says which positions it could return to.
    pub fn plan(&self, len: usize) -> Result<Option<Replay>, String> {
        if len == self.len as usize {
            return Ok(None);
        }
        let (p0, end) = (self.p0 as usize, (self.p0 + self.n) as usize);
        if len < p0 || len > end || !self.replayable {
            return Err(format!(
                "the state covers {} positions and can return to {}",
                self.len,
                if self.replayable {
                    format!("positions {p0}..={end}")
                } else {
                    "none before".into()
                }
            ));
        }
        Ok(Some(Replay {
            tokens: len - p0,
            from_zero: self.reset,
        }))
    }

    /// After replaying `r` (from [`Window::plan`]): the state covers the snapshot's
    /// positions and the replayed tokens, and cannot go back further.
    pub fn rolled_back(&mut self, r: Replay) {
        self.n = r.tokens as u32;
        self.len = self.p0 + self.n;
        self.replayable = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_returns_inside_its_latest_batch_once() {
        let mut w = Window::default();
        w.advance(0, 5);
        assert_eq!(w.len(), 5);
        assert_eq!(w.plan(5), Ok(None));
        assert_eq!(
            w.plan(2),
            Ok(Some(Replay {
                tokens: 2,
                from_zero: true
            }))
        );
        w.advance(5, 4);
        assert!(w.plan(4).unwrap_err().contains("positions 5..=9"));
        let r = w.plan(6).unwrap().unwrap();
        assert_eq!(
            r,
            Replay {
                tokens: 1,
                from_zero: false
            }
        );
        w.rolled_back(r);
        assert_eq!(w.len(), 6);
        assert_eq!(w.plan(6), Ok(None));
        assert!(w.plan(5).unwrap_err().contains("none before"));
        // A long batch (a prompt chunk) keeps no inputs.
        w.advance(6, ROLLBACK_TOKENS as u32 + 1);
        assert!(w.plan(7).unwrap_err().contains("none before"));
    }
}
