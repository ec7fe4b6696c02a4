//! The recurrent layers' rules both backends follow: their shape and state sizes, and the
//! host bookkeeping of each sequence's state (its batch's tokens grouped, the current copy).
//!
//! Each backend keeps two copies of every sequence's state and the inputs of its latest
//! batch (see [`crate::rollback`]); what it does with them on its device is its own.

use crate::error::BackendError;
use crate::ops::DeltaNet;
use crate::rollback::{keeps_inputs, replay_width, Replay, Window, ROLLBACK_TOKENS};

/// Which layers of a model are recurrent and their shape (all alike).
#[derive(Clone, Debug)]
pub struct RecurrentConfig {
    /// Recurrent layers; the model numbers them `0..n_layers` in its recurrent ops.
    pub n_layers: usize,
    /// Shape of every recurrent layer.
    pub net: DeltaNet,
}

/// Floats of state for every layer and sequence: convolution history and delta-rule
/// state (both copies), and the kept inputs of the latest batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLens {
    /// `[layer][seq][copy][channel][K − 1]`.
    pub conv: usize,
    /// `[layer][seq][copy][value head][head_v][head_k]`.
    pub ssm: usize,
    /// `[layer][seq][token of the latest batch][replay_width]`.
    pub replay: usize,
}

impl RecurrentConfig {
    /// The state's floats for `n_seq` sequences.
    pub fn state_lens(&self, n_seq: usize) -> StateLens {
        let net = &self.net;
        let per = |len: usize| self.n_layers * n_seq * len;
        StateLens {
            conv: per(2 * net.conv_state_len()),
            ssm: per(2 * net.state_len()),
            replay: per(ROLLBACK_TOKENS * replay_width(net)),
        }
    }

    /// Bytes of one sequence's state as [`crate::Device::state_save`] writes it: the current
    /// convolution history and delta-rule state of every layer (f32).
    pub fn seq_bytes(&self) -> usize {
        self.n_layers * (self.net.conv_state_len() + self.net.state_len()) * 4
    }

    /// Bytes of state for `n_seq` sequences (both copies and the rollback inputs, f32).
    pub fn bytes(&self, n_seq: usize) -> usize {
        let s = self.state_lens(n_seq);
        (s.conv + s.ssm + s.replay) * 4
    }
}

/// The tokens of one sequence in the batch being evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// The sequence.
    pub seq: u32,
    /// Index of its first token in [`Tracker::order`].
    pub start: u32,
    /// Its tokens in the batch.
    pub n: u32,
    /// Position of its first token.
    pub p0: u32,
}

impl Group {
    /// Whether the pass keeps this group's inputs (it can be rolled back inside them).
    pub fn keeps_inputs(&self) -> bool {
        keeps_inputs(self.n as usize)
    }
}

/// Host bookkeeping of every sequence's recurrent state: which copy is current, the
/// positions it covers, and the current batch's tokens grouped by sequence.
#[derive(Debug)]
pub struct Tracker {
    /// Current copy (0 or 1) of each sequence's state.
    pub cur: Vec<u8>,
    /// Positions each sequence's state covers and its latest batch.
    pub win: Vec<Window>,
    /// The batch's sequences, in order of first appearance.
    pub groups: Vec<Group>,
    /// Token indices of the batch grouped by sequence (batch order within a group).
    pub order: Vec<u32>,
    /// Why the current batch cannot advance the state, if it cannot.
    pub invalid: Option<BackendError>,
}

impl Tracker {
    /// `n_seq` empty sequences, for batches of up to `max_batch` tokens.
    pub fn new(n_seq: usize, max_batch: usize) -> Tracker {
        Tracker {
            cur: vec![0; n_seq],
            win: vec![Window::default(); n_seq],
            groups: Vec::with_capacity(max_batch.min(n_seq)),
            order: Vec::with_capacity(max_batch),
            invalid: None,
        }
    }

    /// Sequences tracked.
    pub fn n_seq(&self) -> usize {
        self.win.len()
    }

    /// Positions the state of `seq` covers.
    pub fn seq_len(&self, seq: u32) -> Option<usize> {
        self.win.get(seq as usize).map(|w| w.len() as usize)
    }

    /// Before a pass: groups the batch's tokens by sequence. Each sequence must start at 0
    /// or continue where its state is, at consecutive positions; otherwise the recurrent ops
    /// touch no state and the pass fails once it ran one.
    pub fn prepare(&mut self, seqs: &[u32], pos: &[u32]) {
        self.invalid = self.group(seqs, pos).err();
        if self.invalid.is_some() {
            self.groups.clear();
            self.order.clear();
        }
    }

    fn group(&mut self, seqs: &[u32], pos: &[u32]) -> Result<(), BackendError> {
        self.groups.clear();
        self.order.clear();
        for (&s, &p) in seqs.iter().zip(pos) {
            match self.groups.iter_mut().find(|g| g.seq == s) {
                Some(g) => {
                    if p != g.p0 + g.n {
                        return Err(BackendError::RecurrentPosition {
                            seq: s,
                            pos: p,
                            expected: g.p0 + g.n,
                        });
                    }
                    g.n += 1;
                }
                None => {
                    let expected = self.win[s as usize].len();
                    if p != 0 && p != expected {
                        return Err(BackendError::RecurrentPosition {
                            seq: s,
                            pos: p,
                            expected,
                        });
                    }
                    self.groups.push(Group {
                        seq: s,
                        start: 0,
                        n: 1,
                        p0: p,
                    });
                }
            }
        }
        for gi in 0..self.groups.len() {
            let seq = self.groups[gi].seq;
            self.groups[gi].start = self.order.len() as u32;
            self.order.extend(
                seqs.iter()
                    .enumerate()
                    .filter(|&(_, &s)| s == seq)
                    .map(|(t, _)| t as u32),
            );
        }
        Ok(())
    }

    /// After a saved state of `seq` covering `len` positions was written into its current
    /// copy: the next batch continues at `len`.
    pub fn restored(&mut self, seq: u32, len: usize) {
        self.win[seq as usize] = Window::restored(len as u32);
    }

    /// After a pass: the copies it wrote become current. A pass that ran no recurrent op
    /// (`touched` false: a multi-token-prediction block alone) leaves the state as it was.
    pub fn finish(&mut self, touched: bool) -> Result<(), BackendError> {
        if !touched {
            self.groups.clear();
            self.invalid = None;
            return Ok(());
        }
        if let Some(e) = self.invalid.take() {
            return Err(e);
        }
        for g in &self.groups {
            let s = g.seq as usize;
            self.cur[s] ^= 1;
            self.win[s].advance(g.p0, g.n);
        }
        self.groups.clear();
        Ok(())
    }

    /// What bringing `seq` back to `len` positions has to replay (`None`: nothing), or why
    /// it cannot.
    pub fn plan_rollback(&self, seq: u32, len: usize) -> Result<Option<Replay>, BackendError> {
        let s = seq as usize;
        if s >= self.n_seq() {
            return Err(BackendError::Rollback {
                seq,
                len,
                reason: format!("there are {} sequences", self.n_seq()),
            });
        }
        self.win[s]
            .plan(len)
            .map_err(|reason| BackendError::Rollback { seq, len, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_group_by_sequence_in_order_of_appearance() {
        let mut t = Tracker::new(3, 8);
        t.prepare(&[2, 0, 2, 0, 2], &[0, 0, 1, 1, 2]);
        assert!(t.invalid.is_none());
        let g: Vec<(u32, u32, u32, u32)> = t
            .groups
            .iter()
            .map(|g| (g.seq, g.start, g.n, g.p0))
            .collect();
        assert_eq!(g, [(2, 0, 3, 0), (0, 3, 2, 0)]);
        assert_eq!(t.order, [0, 2, 4, 1, 3]);
        t.finish(true).unwrap();
        assert_eq!(
            (t.cur[2], t.seq_len(2), t.seq_len(0)),
            (1, Some(3), Some(2))
        );
        // A sequence continues where it is, or starts over at 0.
        t.prepare(&[2], &[5]);
        assert!(matches!(
            t.invalid,
            Some(BackendError::RecurrentPosition {
                seq: 2,
                pos: 5,
                expected: 3
            })
        ));
        assert!(t.groups.is_empty());
        assert!(t.finish(true).is_err());
        assert!(t.plan_rollback(7, 0).is_err());
    }
}
