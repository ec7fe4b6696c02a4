//! How much to draft: the [`Controller`] picks each step's draft length from the measured
//! acceptance and costs, and [`SpecStats`] counts what speculation did over a generation.

use super::MAX_DRAFT;

/// Counts of speculation over one generation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SpecStats {
    /// Which drafter.
    pub drafter: String,
    /// Tokens drafted.
    pub drafted: usize,
    /// Drafted tokens the target kept.
    pub accepted: usize,
    /// Verification steps (target forward passes after the prompt).
    pub steps: usize,
    /// For each draft position, the fraction of tokens drafted there that were kept.
    pub acceptance_by_position: Vec<f64>,
    #[serde(skip)]
    pub(super) drafted_at: Vec<usize>,
    #[serde(skip)]
    pub(super) accepted_at: Vec<usize>,
}

impl SpecStats {
    pub(super) fn record(&mut self, drafted: usize, accepted: usize) {
        self.steps += 1;
        self.drafted += drafted;
        self.accepted += accepted;
        if self.drafted_at.len() < drafted {
            self.drafted_at.resize(drafted, 0);
            self.accepted_at.resize(drafted, 0);
        }
        for i in 0..drafted {
            self.drafted_at[i] += 1;
            if i < accepted {
                self.accepted_at[i] += 1;
            }
        }
    }

    pub(super) fn finish(&mut self) {
        self.acceptance_by_position = self
            .drafted_at
            .iter()
            .zip(&self.accepted_at)
            .map(|(&d, &a)| if d == 0 { 0.0 } else { a as f64 / d as f64 })
            .collect();
    }
}

/// Chooses the draft length each step: the k that maximizes the expected tokens per second,
/// `(1 − a^(k+1)) / (1 − a)` tokens for `t_verify(k) + k × t_draft` seconds, with the
/// per-position acceptance `a` and the costs measured as generation goes (decaying
/// averages). k = 0 is plain decoding; while it wins, a one-token draft is tried now and
/// then to keep the estimates fresh.
#[derive(Clone, Debug)]
pub struct Controller {
    max: usize,
    /// Always draft `max` (for tests and measurements), never adapt.
    fixed: bool,
    /// Decayed counts of kept and rejected drafted tokens.
    kept: f64,
    rejected: f64,
    /// Seconds of a verification pass of 1 token, and per extra token (None: not measured
    /// yet; assumed half a plain step, so exploration starts with short drafts).
    t_one: Option<f64>,
    t_extra: Option<f64>,
    /// Seconds per drafted token.
    t_draft: f64,
    since_probe: usize,
    /// Steps between probes while speculation is off: doubles after each probe that does
    /// not turn it back on (a draft model's probe first catches up with the skipped text).
    probe_every: usize,
}

/// Weight of the past in the decaying averages.
const DECAY: f64 = 0.9;
/// Steps between probes while speculation is off, at first and at most.
const PROBE_EVERY: usize = 16;
const PROBE_EVERY_MAX: usize = 4096;
/// Largest share of the generation time that probes' catch-up may take.
const PROBE_BUDGET: f64 = 0.02;

impl Controller {
    /// A controller drafting at most `max` tokens (capped at [`MAX_DRAFT`]).
    pub fn new(max: usize) -> Controller {
        Controller {
            max: max.min(MAX_DRAFT),
            fixed: false,
            // A mildly optimistic prior: half the drafts kept.
            kept: 1.0,
            rejected: 1.0,
            t_one: None,
            t_extra: None,
            t_draft: 0.0,
            // The first step after a plain one is a probe: the drafter is in sync then.
            since_probe: PROBE_EVERY,
            probe_every: PROBE_EVERY,
        }
    }

    /// A controller that always drafts `k` tokens (capped at [`MAX_DRAFT`]), whatever it
    /// costs: for tests and for measuring a fixed draft length.
    pub fn fixed(k: usize) -> Controller {
        Controller {
            fixed: true,
            ..Controller::new(k)
        }
    }

    /// The estimated probability that a drafted token is kept.
    pub fn acceptance(&self) -> f64 {
        self.kept / (self.kept + self.rejected)
    }

    /// Draft length for the next step, at most `limit`.
    pub fn choose(&mut self, limit: usize) -> usize {
        let max = self.max.min(limit);
        if self.fixed {
            return max;
        }
        let Some(t1) = self.t_one else {
            return 0; // Measure a plain step first.
        };
        let a = self.acceptance().min(0.999);
        let extra = self.t_extra.unwrap_or(0.5 * t1);
        let mut best = (0usize, 1.0 / t1);
        for k in 1..=max {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            let cost = t1 + (extra + self.t_draft) * k as f64;
            let rate = tokens / cost;
            if rate > best.1 {
                best = (k, rate);
            }
        }
        if best.0 > 0 {
            self.probe_every = PROBE_EVERY;
            self.since_probe = 0;
        } else if max > 0 {
            self.since_probe += 1;
            if self.since_probe >= self.probe_every {
                self.since_probe = 0;
                self.probe_every = (2 * self.probe_every).min(PROBE_EVERY_MAX);
                return 1;
            }
        }
        best.0
    }

    /// Records a step: `drafted` tokens proposed, `kept` of them accepted, the verification
    /// pass (of `drafted + 1` tokens) took `t_verify` seconds and drafting `t_draft`.
    pub fn update(&mut self, drafted: usize, kept: usize, t_verify: f64, t_draft: f64) {
        self.update_with_catch_up(drafted, kept, t_verify, t_draft, 0.0);
    }

    /// [`Controller::update`] for a step whose drafter first spent `catch_up` seconds on
    /// tokens it had missed while drafting was off: the next probe is put off until that
    /// cost is at most [`PROBE_BUDGET`] of the plain steps in between.
    pub fn update_with_catch_up(
        &mut self,
        drafted: usize,
        kept: usize,
        t_verify: f64,
        t_draft: f64,
        catch_up: f64,
    ) {
        if let (Some(t1), true) = (self.t_one, catch_up > 0.0) {
            let steps = (catch_up / (PROBE_BUDGET * t1)).ceil() as usize;
            self.probe_every = self.probe_every.max(steps).min(PROBE_EVERY_MAX);
        }
        if drafted > 0 {
            let rejected = usize::from(kept < drafted);
            self.kept = self.kept * DECAY + kept as f64;
            self.rejected = self.rejected * DECAY + rejected as f64;
            let per = t_draft / drafted as f64;
            self.t_draft = if self.t_draft == 0.0 {
                per
            } else {
                self.t_draft * DECAY + per * (1.0 - DECAY)
            };
        }
        match (self.t_one, drafted) {
            (None, 0) => self.t_one = Some(t_verify),
            (Some(t1), 0) => self.t_one = Some(t1 * DECAY + t_verify * (1.0 - DECAY)),
            (Some(t1), d) => {
                let extra = ((t_verify - t1) / d as f64).max(0.0);
                self.t_extra = Some(match self.t_extra {
                    None => extra,
                    Some(e) => e * DECAY + extra * (1.0 - DECAY),
                });
            }
            (None, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_turns_speculation_off_when_it_does_not_pay() {
        // Verifying costs as much per token as a plain step, and drafts are rejected.
        let mut c = Controller::new(6);
        assert_eq!(c.choose(6), 0);
        c.update(0, 0, 0.010, 0.0);
        let mut drafted = 0;
        for _ in 0..64 {
            let k = c.choose(6);
            drafted += k;
            c.update(k, 0, 0.010 * (1 + k) as f64, 0.001 * k as f64);
        }
        assert!(
            drafted < 16,
            "drafted {drafted} tokens that were all rejected"
        );
        // Cheap verification and every draft kept: it drafts the most it may.
        let mut c = Controller::new(6);
        c.update(0, 0, 0.010, 0.0);
        let mut last = 0;
        for _ in 0..32 {
            last = c.choose(6);
            c.update(last, last, 0.010 + 0.001 * last as f64, 0.0);
        }
        assert_eq!(last, 6);
        assert_eq!(Controller::fixed(3).choose(6), 3);
    }
}
