//! Picking a sequence's next token from its logit row: the sampler's chain, with the
//! request's logit bias, its grammar's mask and end-of-generation tokens masked when they
//! are ignored, and the rejection rule for drafts.

use constrain::Constraint;

use crate::sampling::{argmax_excluding, Sampler, SamplingParams};
use crate::speculative::Draft;

/// How one sequence picks its tokens: plain and speculative generation and the server's
/// every sequence pick through one, so a token does not depend on which of them runs.
pub struct Picker {
    sampler: Sampler,
    greedy: bool,
    /// End-of-generation ids never picked (empty unless they are ignored).
    banned: Vec<u32>,
    /// The row with `banned` masked out (sampling ignoring EOS).
    masked: Vec<f32>,
    /// Scratch of the rejection rule, allocated when a sampled sequence first verifies.
    verify: Option<Verify>,
    /// Added to these tokens' logits before each pick.
    bias: Vec<(u32, f32)>,
    /// What the output must match: its mask applies before each pick, and each picked
    /// token advances it.
    constraint: Option<Box<Constraint>>,
}

impl Picker {
    /// A picker sampling with `params` over `vocab` tokens; with `ignore_eos`, the ids `eog`
    /// are never picked (greedy takes the argmax without them, sampling sees them masked).
    pub fn new(params: &SamplingParams, vocab: usize, ignore_eos: bool, eog: &[u32]) -> Picker {
        Picker {
            sampler: Sampler::new(params.clone(), vocab),
            greedy: params.temperature <= 0.0,
            banned: if ignore_eos { eog.to_vec() } else { Vec::new() },
            masked: Vec::new(),
            verify: None,
            bias: Vec::new(),
            constraint: None,
        }
    }

    /// The picker with `bias` added to those tokens' logits before every pick (ids past the
    /// row are ignored).
    pub fn with_bias(mut self, bias: Vec<(u32, f32)>) -> Picker {
        self.bias = bias;
        self
    }

    /// The picker with `constraint` (if any) masking every pick: a token the grammar does
    /// not allow is never picked, and no draft outside it is ever kept.
    pub fn with_constraint(mut self, constraint: Option<Constraint>) -> Picker {
        self.constraint = constraint.map(Box::new);
        self
    }

    /// Whether picks are constrained by a grammar.
    pub fn is_constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// Computes the grammar's mask for the next pick now (say while the forward pass runs),
    /// so the pick itself is quick. Nothing without a grammar.
    pub fn prepare(&mut self) {
        if let Some(c) = self.constraint.as_mut() {
            c.prepare();
        }
    }

    /// How many of `drafts` the grammar allows in a row from here (all without a grammar):
    /// the drafts past them would never be kept, so they need not be verified.
    pub fn valid_drafts(&mut self, drafts: &[u32]) -> usize {
        match self.constraint.as_mut() {
            Some(c) => c.valid_prefix(drafts),
            None => drafts.len(),
        }
    }

    /// Whether the grammar is complete (only end-of-generation may follow).
    pub fn grammar_finished(&self) -> bool {
        self.constraint.as_ref().is_some_and(|c| c.is_finished())
    }

    /// Tells the sampler about a token of the prompt (for its penalties).
    pub fn accept(&mut self, id: u32) {
        self.sampler.accept(id);
    }

    /// Picks the next token from `row` (and accepts it).
    pub fn pick(&mut self, row: &[f32]) -> u32 {
        self.pick_draft(row, None).0
    }

    /// [`Picker::pick`] for a row that a drafted token (draft position `i` of `draft`)
    /// was proposed for: sampling keeps or replaces it by the rejection rule
    /// ([`verify_sampled`]), greedy keeps it when it is the pick. Returns the token and
    /// whether it is the draft's.
    pub fn pick_draft(&mut self, row: &[f32], drafted: Option<(&Draft, usize)>) -> (u32, bool) {
        let d = drafted.map(|(draft, i)| draft.tokens[i]);
        let shaped = !self.banned.is_empty() || !self.bias.is_empty() || self.constraint.is_some();
        let (id, keep) =
            if shaped && self.greedy && self.bias.is_empty() && self.constraint.is_none() {
                // Greedy, only ignoring EOS: the argmax without them (no copy of the row).
                let id = argmax_excluding(row, &self.banned);
                (id, d == Some(id))
            } else {
                if shaped {
                    self.shape(row);
                }
                let row: &[f32] = if shaped { &self.masked } else { row };
                match drafted {
                    Some((draft, i)) if !self.greedy => {
                        let v = self.verify.get_or_insert_with(|| Verify::new(row.len()));
                        verify_sampled(&mut self.sampler, row, draft, i, draft.tokens[i], v)
                    }
                    _ => {
                        let id = self.sampler.sample(row);
                        (id, d == Some(id))
                    }
                }
            };
        self.sampler.accept(id);
        if let Some(c) = self.constraint.as_mut() {
            c.consume(id);
        }
        (id, keep)
    }

    /// Copies `row` into `masked`, reshaped: the bias added, then the ignored
    /// end-of-generation tokens and what the grammar refuses set to −∞ (end-of-generation
    /// stays allowed once the grammar is complete: then it is all the grammar allows).
    fn shape(&mut self, row: &[f32]) {
        self.masked.clear();
        self.masked.extend_from_slice(row);
        for &(t, b) in &self.bias {
            if let Some(v) = self.masked.get_mut(t as usize) {
                *v += b;
            }
        }
        if !self.grammar_finished() {
            for &e in &self.banned {
                if let Some(v) = self.masked.get_mut(e as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(c) = self.constraint.as_mut() {
            c.apply(&mut self.masked);
        }
    }
}

/// Scratch of the verification step ([`verify_sampled`]), allocated once per generation.
pub struct Verify {
    q: Vec<f32>,
    resid: Vec<(u32, f32)>,
}

impl Verify {
    /// Scratch for a vocabulary of `vocab` tokens.
    pub fn new(vocab: usize) -> Verify {
        Verify {
            q: vec![0.0; vocab],
            resid: Vec::with_capacity(vocab),
        }
    }
}

/// The rejection rule for draft position `i` (token `d`, drawn from the drafter's `q`) with
/// the target's logits `row`: keep `d` with probability `min(1, p(d)/q(d))`; otherwise draw
/// from `max(0, p − q)` normalized. Returns the token and whether it is the draft's.
///
/// `sampler` must have accepted every token before draft position `i` (as [`Sampler::accept`]
/// would for plain sampling); the caller accepts the returned token.
pub fn verify_sampled(
    sampler: &mut Sampler,
    row: &[f32],
    draft: &Draft,
    i: usize,
    d: u32,
    s: &mut Verify,
) -> (u32, bool) {
    let qd = draft.q(i);
    let p = sampler.distribution(row);
    let pd = p.iter().find(|e| e.0 == d).map_or(0.0, |e| e.1);
    let u = sampler.uniform();
    if qd > 0.0 && u < pd / qd {
        return (d, true);
    }
    // The residual distribution max(0, p − q).
    let deterministic = draft.dists.get(i).is_none_or(|q| q.is_empty());
    if deterministic {
        s.q[d as usize] = 1.0;
    } else {
        for &(id, q) in &draft.dists[i] {
            s.q[id as usize] = q;
        }
    }
    let p = sampler.last_distribution();
    s.resid.clear();
    let mut total = 0.0f64;
    for &(id, pp) in p {
        let r = (pp - s.q[id as usize]).max(0.0);
        if r > 0.0 {
            s.resid.push((id, r));
            total += r as f64;
        }
    }
    if deterministic {
        s.q[d as usize] = 0.0;
    } else {
        for &(id, _) in &draft.dists[i] {
            s.q[id as usize] = 0.0;
        }
    }
    let u = sampler.uniform() as f64 * total;
    let mut acc = 0.0f64;
    for &(id, r) in &s.resid {
        acc += r as f64;
        if u < acc {
            return (id, false);
        }
    }
    // Rounding left u at the very end (or p ⊆ q exactly): the last candidate.
    (s.resid.last().map_or(d, |e| e.0), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(l: &[f32]) -> Vec<f64> {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = l.iter().map(|&v| ((v - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn plain(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        }
    }

    /// Pearson's chi-square of `counts` against probabilities `p`.
    fn chi2(counts: &[usize], p: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .map(|(&c, &p)| {
                let e = n as f64 * p;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// With drafts drawn from q, the rejection rule's output follows p (the target's
    /// distribution), whatever q is; the acceptance rate is Σ min(p, q).
    #[test]
    fn the_rejection_rule_samples_the_target_distribution() {
        let target = [2.0f32, 1.0, 0.5, 0.0, -1.0, 1.5];
        let p = softmax(&target);
        let n = 40_000;
        // Chi-square, 5 degrees of freedom: P(> 20.5) = 0.001.
        const LIMIT: f64 = 20.5;
        for draft_logits in [
            [0.0f32, 2.0, 0.0, 1.0, 0.0, -1.0],
            [2.0, 1.0, 0.5, 0.0, -1.0, 1.5],
        ] {
            let q = softmax(&draft_logits);
            let mut sampler = Sampler::new(plain(1), 6);
            let mut drafter = Sampler::new(plain(2), 6);
            let mut draft = Draft::default();
            let mut s = Verify {
                q: vec![0.0; 6],
                resid: Vec::new(),
            };
            let mut counts = [0usize; 6];
            let mut kept = 0;
            for _ in 0..n {
                draft.clear();
                let d = drafter.sample(&draft_logits);
                draft.tokens.push(d);
                if draft.dists.is_empty() {
                    draft.dists.push(Vec::new());
                }
                draft.dists[0].extend_from_slice(drafter.last_distribution());
                let (id, keep) = verify_sampled(&mut sampler, &target, &draft, 0, d, &mut s);
                counts[id as usize] += 1;
                kept += usize::from(keep);
            }
            let c = chi2(&counts, &p);
            assert!(c < LIMIT, "chi-square {c} for q = {q:?}: {counts:?}");
            let want: f64 = p.iter().zip(&q).map(|(a, b)| a.min(*b)).sum();
            let got = kept as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "acceptance {got} vs {want}");
        }
        // A deterministic drafter (the n-gram one) always proposing token 1.
        let mut sampler = Sampler::new(plain(3), 6);
        let mut draft = Draft::default();
        let mut s = Verify {
            q: vec![0.0; 6],
            resid: Vec::new(),
        };
        let mut counts = [0usize; 6];
        for _ in 0..n {
            draft.clear();
            draft.tokens.push(1);
            let (id, keep) = verify_sampled(&mut sampler, &target, &draft, 0, 1, &mut s);
            assert_eq!(keep, id == 1);
            counts[id as usize] += 1;
        }
        let c = chi2(&counts, &p);
        assert!(
            c < LIMIT,
            "chi-square {c} for a point-mass draft: {counts:?}"
        );
    }
}
