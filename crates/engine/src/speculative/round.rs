//! One sequence's speculative round, the same in the engine and the server: draft, (the
//! caller's verification pass), then pick the kept drafts and the target's own token.

use std::time::Instant;

use super::{Controller, Draft, DraftSource, SpecError, SpecStats, MAX_DRAFT};
use crate::pick::Picker;
use crate::session::Engine;

/// A sequence under speculative decoding: its controller, the text it drafts from, this
/// round's draft and what verifying it picked.
///
/// A round: [`SpecSeq::draft`], one target pass over the sequence's last token and the
/// drafts (alone or batched with other sequences), [`SpecSeq::verify`] on the pass's rows,
/// then the caller emits [`SpecSeq::picked`] in order, pushing each token it keeps onto
/// [`SpecSeq::history`].
pub struct SpecSeq {
    /// Picks each round's draft length.
    pub ctl: Controller,
    /// The prompt and every token kept so far.
    pub history: Vec<u32>,
    /// What speculation did so far.
    pub stats: SpecStats,
    draft: Draft,
    /// The tokens verification picked, with the row each came from.
    picked: Vec<(u32, usize)>,
    /// Seconds spent drafting this round, and of them catching up with tokens missed while
    /// not drafting.
    t_draft: f64,
    catch_up: f64,
}

impl SpecSeq {
    /// A sequence after `prompt` (room is made for `max_tokens` more) whose drafts come
    /// from a source named `drafter`.
    pub fn new(ctl: Controller, prompt: &[u32], max_tokens: usize, drafter: &str) -> SpecSeq {
        let mut history = Vec::with_capacity(prompt.len() + max_tokens + 1);
        history.extend_from_slice(prompt);
        SpecSeq {
            ctl,
            history,
            stats: SpecStats {
                drafter: drafter.to_string(),
                ..SpecStats::default()
            },
            draft: Draft::default(),
            picked: Vec::with_capacity(MAX_DRAFT + 1),
            t_draft: 0.0,
            catch_up: 0.0,
        }
    }

    /// Drafts as many tokens as the controller picks (at most `limit`) for sequence `seq`
    /// of `target` from `source`. Returns them; on an error the draft is empty (the round
    /// goes on without drafts if the caller wants).
    pub fn draft(
        &mut self,
        target: &mut Engine,
        source: &mut DraftSource,
        seq: usize,
        limit: usize,
    ) -> Result<&[u32], SpecError> {
        let k = self.ctl.choose(limit);
        self.draft.clear();
        self.catch_up = 0.0;
        let t = Instant::now();
        let mut r = Ok(());
        if k > 0 {
            match source.propose(target, seq, &self.history, k, &mut self.draft) {
                Ok(c) => self.catch_up = c,
                Err(e) => {
                    self.draft.clear();
                    r = Err(e);
                }
            }
        }
        self.draft.tokens.truncate(k);
        self.t_draft = (t.elapsed().as_secs_f64() - self.catch_up).max(0.0);
        r.map(|()| &self.draft.tokens[..])
    }

    /// This round's drafted tokens.
    pub fn drafted(&self) -> &[u32] {
        &self.draft.tokens
    }

    /// Keeps only the first `n` drafted tokens of this round (those a grammar allows).
    pub fn keep_draft(&mut self, n: usize) {
        self.draft.tokens.truncate(n);
    }

    /// Forgets this round's draft (the next [`SpecSeq::verify`] picks from one row).
    pub fn clear_draft(&mut self) {
        self.draft.clear();
    }

    /// Picks tokens from `rows` (`vocab` logits each: the row of the last token, then one
    /// per drafted token): each draft while `picker` keeps it, then the one it picks in its
    /// place or after the last draft. With `t_verify` (the seconds the pass took), the round
    /// is scored (the controller and the stats learn from it). Returns how many drafts were
    /// kept; the tokens are in [`SpecSeq::picked`].
    pub fn verify(
        &mut self,
        picker: &mut Picker,
        rows: &[f32],
        vocab: usize,
        t_verify: Option<f64>,
    ) -> usize {
        self.picked.clear();
        let n_draft = self.draft.tokens.len();
        let mut kept = 0;
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            let drafted = (i < n_draft).then_some((&self.draft, i));
            let (id, keep) = picker.pick_draft(row, drafted);
            self.picked.push((id, i));
            if !keep {
                break;
            }
            kept += 1;
        }
        if let Some(tv) = t_verify {
            self.stats.record(n_draft, kept);
            self.ctl
                .update_with_catch_up(n_draft, kept, tv, self.t_draft, self.catch_up);
        }
        kept
    }

    /// The tokens the last [`SpecSeq::verify`] picked, with the row each came from.
    pub fn picked(&self) -> &[(u32, usize)] {
        &self.picked
    }

    /// The statistics, finished (acceptance by position computed).
    pub fn finish_stats(&mut self) -> SpecStats {
        self.stats.finish();
        self.stats.clone()
    }
}
