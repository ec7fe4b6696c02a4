//! What proposes drafts: [`DraftSource`] is the one type the engine and the server drive,
//! over prompt lookup ([`NgramDrafter`]), a draft model ([`ModelDrafter`]) or MTP heads.

use super::{ModelDrafter, SpecError};
use crate::mtp::MtpState;
use crate::sampling::SamplingParams;
use crate::session::{Engine, EngineError};

/// Tokens a drafter proposes, with the distribution each was drawn from.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    /// The proposed tokens, in order.
    pub tokens: Vec<u32>,
    /// For each token, the drafter's distribution `q` it was sampled from, as (id,
    /// probability); empty when the drafter is deterministic (`q` is then a point mass on
    /// the token). Buffers are reused from step to step.
    pub dists: Vec<Vec<(u32, f32)>>,
}

impl Draft {
    /// Empties the draft, keeping its buffers.
    pub fn clear(&mut self) {
        self.tokens.clear();
        for d in &mut self.dists {
            d.clear();
        }
    }

    /// `q(token)` for draft position `i`: 1 for a deterministic drafter.
    pub(crate) fn q(&self, i: usize) -> f32 {
        let t = self.tokens[i];
        match self.dists.get(i) {
            Some(d) if !d.is_empty() => d.iter().find(|e| e.0 == t).map_or(0.0, |e| e.1),
            _ => 1.0,
        }
    }
}

/// The target model's own multi-token-prediction block as the drafter (`qwen35` files with
/// `nextn_predict_layers` > 0): greedy drafts from the target's hidden states, see
/// [`crate::mtp`]; a state per sequence it drafts for.
#[derive(Default)]
pub struct MtpDrafter {
    /// With `Some`, every round's (position of the last verified token, proposals).
    pub trace: Option<Vec<(usize, Vec<u32>)>>,
    states: Vec<MtpState>,
}

impl MtpDrafter {
    /// A drafter recording every round's proposals in [`MtpDrafter::trace`].
    pub fn traced() -> MtpDrafter {
        MtpDrafter {
            trace: Some(Vec::new()),
            ..MtpDrafter::default()
        }
    }
}

/// Where drafts come from, for every sequence a target engine generates: what
/// [`Engine::generate_speculative`] and the server's scheduler drive.
pub enum DraftSource {
    /// Prompt lookup, no model.
    Ngram(NgramDrafter),
    /// A small model sharing the target's tokenizer (a sequence of its own per target
    /// sequence).
    Model(Box<ModelDrafter>),
    /// The target's own MTP block (it needs the target's hidden states: the engine's
    /// prompt and verification passes feed it, see [`DraftSource::mtp_state`]).
    Mtp(MtpDrafter),
}

impl DraftSource {
    /// Short name for reports (`"ngram"`, `"draft"`, `"mtp"`).
    pub fn name(&self) -> &'static str {
        match self {
            DraftSource::Ngram(_) => "ngram",
            DraftSource::Model(_) => "draft",
            DraftSource::Mtp(_) => "mtp",
        }
    }

    /// Whether it can draft after a prompt with images: only the MTP block, which takes
    /// the image rows as its inputs (a draft model or n-grams cannot see the image).
    pub fn sees_images(&self) -> bool {
        matches!(self, DraftSource::Mtp(_))
    }

    /// Readies sequence `seq` of `target` for a generation after `prompt`: a draft model
    /// evaluates the prompt (from an empty cache; with `sampling`, its sampler for the
    /// sequence is made anew from it), MTP forgets the sequence. Returns whether it drafts
    /// for the sequence (a draft model loaded with fewer sequences does not).
    pub fn start(
        &mut self,
        target: &Engine,
        seq: usize,
        prompt: &[u32],
        sampling: Option<&SamplingParams>,
    ) -> Result<bool, SpecError> {
        match self {
            DraftSource::Ngram(_) => Ok(true),
            DraftSource::Model(d) => {
                if seq >= d.n_seq() {
                    return Ok(false);
                }
                let r = match sampling {
                    Some(s) => d.start_seq(seq, prompt, s),
                    None => d.prepare_seq(seq, prompt),
                };
                if r.is_err() {
                    d.reset_seq(seq);
                }
                r.map(|()| true)
            }
            DraftSource::Mtp(m) => {
                if !target.has_mtp() {
                    return Err(SpecError::NoMtp);
                }
                while m.states.len() <= seq {
                    let (b, d) = (target.n_batch(), target.model.hp.n_embd);
                    m.states.push(MtpState::new(b, d));
                }
                m.states[seq].reset();
                Ok(true)
            }
        }
    }

    /// The MTP state of sequence `seq` (for the engine's prompt passes to feed), if this
    /// is the MTP drafter and [`DraftSource::start`] readied the sequence.
    pub fn mtp_state(&mut self, seq: usize) -> Option<&mut MtpState> {
        match self {
            DraftSource::Mtp(m) => m.states.get_mut(seq),
            _ => None,
        }
    }

    /// Proposes up to `k` tokens that continue `history` (sequence `seq`'s prompt and every
    /// token kept so far) into `draft` (cleared by the caller). Proposing fewer, or none,
    /// is fine. Returns the seconds spent catching up with tokens the drafter had not seen
    /// (after steps without drafting), which the [`super::Controller`] leaves out of the
    /// cost per draft.
    pub fn propose(
        &mut self,
        target: &mut Engine,
        seq: usize,
        history: &[u32],
        k: usize,
        draft: &mut Draft,
    ) -> Result<f64, SpecError> {
        match self {
            DraftSource::Ngram(n) => {
                n.propose(history, k, draft);
                Ok(0.0)
            }
            DraftSource::Model(d) => d.propose_seq(seq, history, k, draft),
            DraftSource::Mtp(m) => {
                let Some(st) = m.states.get_mut(seq) else {
                    return Ok(0.0);
                };
                let r = target.mtp_propose_seq(seq as u32, st, history, k, draft)?;
                if let Some(t) = &mut m.trace {
                    t.push((history.len() - 1, draft.tokens.clone()));
                }
                Ok(r)
            }
        }
    }

    /// Called right after each verification pass of `target` in which sequence `seq` had
    /// rows `row0..row0 + rows` (its tokens at positions `start..`): the MTP drafter keeps
    /// their hidden states.
    pub fn after_pass(
        &mut self,
        target: &mut Engine,
        seq: usize,
        row0: usize,
        start: usize,
        rows: usize,
    ) -> Result<(), EngineError> {
        match self.mtp_state(seq) {
            Some(st) => target.mtp_keep_hidden_rows(st, row0, start, rows),
            None => Ok(()),
        }
    }
}

/// Prompt lookup: finds the latest earlier occurrence of the last `n` tokens (longest `n`
/// first, down to `min_n`) and proposes what followed it. Costs microseconds, no model.
#[derive(Clone, Debug)]
pub struct NgramDrafter {
    /// Longest suffix looked up.
    pub max_n: usize,
    /// Shortest suffix looked up.
    pub min_n: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        NgramDrafter { max_n: 4, min_n: 2 }
    }
}

impl NgramDrafter {
    /// Proposes up to `k` tokens that continue `history` into `draft`: what followed the
    /// latest earlier occurrence of its longest suffix found, or nothing.
    pub fn propose(&self, history: &[u32], k: usize, draft: &mut Draft) {
        let len = history.len();
        for n in (self.min_n.max(1)..=self.max_n.min(len.saturating_sub(1))).rev() {
            let suffix = &history[len - n..];
            // Latest start i < len - n with history[i..i + n] == suffix.
            if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == suffix) {
                let next = &history[i + n..];
                draft.tokens.extend(next.iter().take(k));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_proposes_what_followed_the_latest_match() {
        let d = NgramDrafter::default();
        let mut draft = Draft::default();
        let h = [1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 1, 2, 3];
        d.propose(&h, 3, &mut draft);
        assert_eq!(draft.tokens, [5, 6, 1]);
        draft.clear();
        d.propose(&[1, 2, 3, 4], 3, &mut draft);
        assert!(draft.tokens.is_empty());
    }
}
