//! Speculative decoding: a drafter proposes the next few tokens, the target model checks them
//! all in one batched pass and keeps the prefix its own sampling agrees with, exactly.
//!
//! - [`Drafter`]: what proposes tokens. [`NgramDrafter`] looks the recent tokens up earlier
//!   in the text (prompt lookup, no extra model); [`ModelDrafter`] runs a small model that
//!   shares the target's tokenizer. Drafters see only token ids, so a drafter fed by the
//!   target's own hidden state (MTP heads) fits the same interface.
//! - Verification ([`Engine::generate_speculative`]): the last token and k drafts are
//!   evaluated together; at temperature 0 a draft is kept while it equals the target's
//!   argmax, otherwise by the rejection rule (keep `x` with probability `min(1, p(x)/q(x))`,
//!   else draw from `max(0, p − q)` normalized), so the output follows the target's
//!   distribution exactly. The sequence state past the kept tokens is then rolled back by
//!   the model ([`model::Model::rollback`]).
//! - [`Controller`]: picks k every step from the measured acceptance and the measured cost
//!   of a step and of a draft, and drafts nothing when speculation does not pay.
//!
//! Verification batches stay below [`runtime::GEMM_MIN_TOKENS`] tokens, so every token
//! is computed exactly as a lone decode step would compute it: greedy output is identical
//! with and without speculation.

use std::path::Path;
use std::time::Instant;

use crate::sampling::{argmax_excluding, top_logprobs, Sampler, SamplingParams};
use crate::session::{
    Emitter, Engine, EngineError, EngineOptions, GenerateOptions, Generation, PromptPart,
};

/// Most tokens drafted per step: with the last token, a verification batch stays below the
/// size at which the CPU backend switches to its prompt GEMM (different rounding).
pub const MAX_DRAFT: usize = runtime::GEMM_MIN_TOKENS - 2;

/// Why speculative decoding could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("MTP drafting: {0}")]
    Mtp(&'static str),
    #[error("the model has no multi-token-prediction block: use --spec ngram or --spec draft")]
    NoMtp,
    #[error("with images in the prompt only the MTP drafter speculates (a draft model or n-grams cannot see the image): use --spec mtp or --spec none")]
    ImagesNeedMtp,
    #[error("the draft model's vocabulary ({draft} tokens) differs from the target's ({target}); a draft model must share the target's tokenizer")]
    Vocabulary { draft: usize, target: usize },
    #[error("the draft model's tokenizer disagrees with the target's on token {id} ({draft:?} vs {target:?}); a draft model must share the target's tokenizer")]
    Tokenizer {
        id: u32,
        draft: String,
        target: String,
    },
}

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
    fn q(&self, i: usize) -> f32 {
        let t = self.tokens[i];
        match self.dists.get(i) {
            Some(d) if !d.is_empty() => d.iter().find(|e| e.0 == t).map_or(0.0, |e| e.1),
            _ => 1.0,
        }
    }
}

/// Something that proposes the next tokens of a sequence.
pub trait Drafter {
    /// Short name for reports (`"ngram"`, `"draft"`).
    fn name(&self) -> &'static str;

    /// Called once with the prompt before generation (a draft model evaluates it here).
    fn prepare(&mut self, prompt: &[u32]) -> Result<(), SpecError> {
        let _ = prompt;
        Ok(())
    }

    /// Proposes up to `k` tokens that continue `history` (the prompt and every token kept
    /// so far) into `draft` (cleared by the caller). Proposing fewer, or none, is fine.
    /// Returns the seconds spent catching up with tokens the drafter had not seen (after
    /// steps without drafting), which the [`Controller`] leaves out of the cost per draft.
    fn propose(&mut self, history: &[u32], k: usize, draft: &mut Draft) -> Result<f64, SpecError>;

    /// Whether this is the target model's own MTP block ([`MtpDrafter`]), which the engine
    /// runs itself (it needs the target's hidden states).
    fn is_mtp(&self) -> bool {
        false
    }

    /// Told each round's first position and proposals (the MTP drafter keeps them for tests).
    fn record(&mut self, pos: usize, drafts: &[u32]) {
        let _ = (pos, drafts);
    }
}

/// The target model's own multi-token-prediction block as the drafter (`qwen35` files with
/// `nextn_predict_layers` > 0): greedy drafts, see [`crate::mtp`]. The engine runs it.
#[derive(Debug, Default)]
pub struct MtpDrafter {
    /// With `Some`, every round's (position of the last verified token, proposals).
    pub trace: Option<Vec<(usize, Vec<u32>)>>,
}

impl Drafter for MtpDrafter {
    fn name(&self) -> &'static str {
        "mtp"
    }

    fn propose(&mut self, _: &[u32], _: usize, _: &mut Draft) -> Result<f64, SpecError> {
        // The engine drafts with the block itself; reaching here means no engine did.
        Err(SpecError::Mtp(
            "the MTP drafter runs inside Engine::generate_speculative",
        ))
    }

    fn is_mtp(&self) -> bool {
        true
    }

    fn record(&mut self, pos: usize, drafts: &[u32]) {
        if let Some(t) = &mut self.trace {
            t.push((pos, drafts.to_vec()));
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

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(&mut self, history: &[u32], k: usize, draft: &mut Draft) -> Result<f64, SpecError> {
        let len = history.len();
        for n in (self.min_n.max(1)..=self.max_n.min(len.saturating_sub(1))).rev() {
            let suffix = &history[len - n..];
            // Latest start i < len - n with history[i..i + n] == suffix.
            if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == suffix) {
                let next = &history[i + n..];
                draft.tokens.extend(next.iter().take(k));
                return Ok(0.0);
            }
        }
        Ok(0.0)
    }
}

/// A small model that shares the target's tokenizer, run one token at a time in its own
/// engine; its KV cache follows the target's history (only the tokens that changed are
/// evaluated again).
///
/// Loaded with several sequences ([`ModelDrafter::load_for`]), it drafts for each of them
/// in turn ([`ModelDrafter::propose_seq`]), each with its own cache contents and sampler:
/// a server drafts for every slot with one draft engine. The [`Drafter`] impl drafts for
/// sequence 0.
pub struct ModelDrafter {
    engine: Engine,
    /// Per sequence: the sampler, whether it is greedy, and the tokens its cache holds.
    seqs: Vec<DraftSeq>,
    logits: Vec<f32>,
}

/// One sequence of a [`ModelDrafter`].
struct DraftSeq {
    sampler: Sampler,
    greedy: bool,
    /// Tokens whose keys and values the draft's cache holds for this sequence, in order.
    cached: Vec<u32>,
}

impl DraftSeq {
    fn new(sampling: &SamplingParams, vocab: usize) -> DraftSeq {
        let mut params = sampling.clone();
        params.seed = params.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        DraftSeq {
            greedy: sampling.temperature <= 0.0,
            sampler: Sampler::new(params, vocab),
            cached: Vec::new(),
        }
    }
}

impl ModelDrafter {
    /// Loads the draft model at `path` for a target `target`, sampling with `sampling` (its
    /// own RNG stream). Checks that the two share a tokenizer.
    pub fn load(
        path: &Path,
        target: &Engine,
        opts: &EngineOptions,
        sampling: &SamplingParams,
    ) -> Result<ModelDrafter, SpecError> {
        ModelDrafter::load_for(path, target, opts, sampling, 1)
    }

    /// [`ModelDrafter::load`] with `n_seq` sequences (one per target sequence it drafts
    /// for), every one sampling with `sampling` until [`ModelDrafter::start_seq`] says
    /// otherwise.
    pub fn load_for(
        path: &Path,
        target: &Engine,
        opts: &EngineOptions,
        sampling: &SamplingParams,
        n_seq: usize,
    ) -> Result<ModelDrafter, SpecError> {
        let engine = Engine::load(
            path,
            &EngineOptions {
                n_seq: n_seq.max(1),
                max_logit_rows: 1,
                ..opts.clone()
            },
        )?;
        ModelDrafter::new(engine, target, sampling)
    }

    /// A drafter over an engine already loaded (which then runs on the target's threads),
    /// with as many sequences as the engine has.
    pub fn new(
        mut engine: Engine,
        target: &Engine,
        sampling: &SamplingParams,
    ) -> Result<ModelDrafter, SpecError> {
        let (dv, tv) = (engine.model.hp.n_vocab, target.model.hp.n_vocab);
        if dv != tv {
            return Err(SpecError::Vocabulary {
                draft: dv,
                target: tv,
            });
        }
        // A sample of ids across the vocabulary must spell the same.
        for id in (0..tv as u32).step_by((tv / 97).max(1)) {
            let (d, t) = (
                engine.tokenizer.piece(id, true),
                target.tokenizer.piece(id, true),
            );
            if d != t {
                return Err(SpecError::Tokenizer {
                    id,
                    draft: String::from_utf8_lossy(d).into_owned(),
                    target: String::from_utf8_lossy(t).into_owned(),
                });
            }
        }
        engine.backend.share_pool(&target.backend);
        let n_seq = engine.n_seq.max(1);
        Ok(ModelDrafter {
            seqs: (0..n_seq).map(|_| DraftSeq::new(sampling, dv)).collect(),
            logits: vec![0.0; dv],
            engine,
        })
    }

    /// Sequences it can draft for. The `*_seq` methods panic for a `seq` at or past it.
    pub fn n_seq(&self) -> usize {
        self.seqs.len()
    }

    /// Starts a new generation in sequence `seq`: its cache is forgotten, its sampler is
    /// made from `sampling` (greedy requests draft by argmax), and the prompt but its last
    /// token is evaluated (the last one goes with the first drafting step).
    pub fn start_seq(
        &mut self,
        seq: usize,
        prompt: &[u32],
        sampling: &SamplingParams,
    ) -> Result<(), SpecError> {
        self.seqs[seq] = DraftSeq::new(sampling, self.logits.len());
        self.prepare_seq(seq, prompt)
    }

    /// Forgets what sequence `seq`'s cache holds (the next proposal evaluates its whole
    /// history).
    pub fn reset_seq(&mut self, seq: usize) {
        self.seqs[seq].cached.clear();
    }

    /// Evaluates `prompt` but its last token in sequence `seq`, from an empty cache.
    pub fn prepare_seq(&mut self, seq: usize, prompt: &[u32]) -> Result<(), SpecError> {
        self.seqs[seq].cached.clear();
        if prompt.len() > 1 {
            let n = prompt.len() - 1;
            self.engine.eval(seq as u32, &prompt[..n], 0, false)?;
            self.seqs[seq].cached.extend_from_slice(&prompt[..n]);
        }
        Ok(())
    }

    /// [`Drafter::propose`] for sequence `seq`: up to `k` tokens continuing `history`,
    /// drawn with that sequence's sampler (with their distributions in `draft.dists` when it
    /// samples). Returns the seconds spent catching up with tokens it had not seen.
    pub fn propose_seq(
        &mut self,
        seq: usize,
        history: &[u32],
        k: usize,
        draft: &mut Draft,
    ) -> Result<f64, SpecError> {
        if k == 0 || history.is_empty() || history.len() + k > self.engine.n_ctx() {
            return Ok(0.0);
        }
        let st = &mut self.seqs[seq];
        let reuse = st
            .cached
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count()
            .min(history.len() - 1);
        st.cached.truncate(reuse);
        // Drafting continuously, the new tokens are the last kept ones: one pass, which
        // counts as drafting. Anything older was missed while drafting was off.
        let t = Instant::now();
        let missed = history.len() - reuse > MAX_DRAFT + 2;
        let logits = match self
            .engine
            .eval(seq as u32, &history[reuse..], reuse, false)
        {
            Ok(l) => l,
            Err(e) => {
                st.cached.clear();
                return Err(e.into());
            }
        };
        self.logits.copy_from_slice(logits);
        st.cached.extend_from_slice(&history[reuse..]);
        let catch_up = if missed {
            t.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let keep_dists = !st.greedy;
        while draft.dists.len() < k && keep_dists {
            draft.dists.push(Vec::new());
        }
        for j in 0..k {
            let id = if st.greedy {
                argmax_excluding(&self.logits, &[])
            } else {
                let id = st.sampler.sample(&self.logits);
                let d = &mut draft.dists[j];
                d.clear();
                d.extend_from_slice(st.sampler.last_distribution());
                id
            };
            draft.tokens.push(id);
            if j + 1 == k {
                break;
            }
            let pos = st.cached.len();
            let logits = match self.engine.eval(seq as u32, &[id], pos, false) {
                Ok(l) => l,
                Err(e) => {
                    st.cached.clear();
                    return Err(e.into());
                }
            };
            self.logits.copy_from_slice(logits);
            st.cached.push(id);
        }
        Ok(catch_up)
    }
}

impl Drafter for ModelDrafter {
    fn name(&self) -> &'static str {
        "draft"
    }

    fn prepare(&mut self, prompt: &[u32]) -> Result<(), SpecError> {
        self.prepare_seq(0, prompt)
    }

    fn propose(&mut self, history: &[u32], k: usize, draft: &mut Draft) -> Result<f64, SpecError> {
        self.propose_seq(0, history, k, draft)
    }
}

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
    drafted_at: Vec<usize>,
    #[serde(skip)]
    accepted_at: Vec<usize>,
}

impl SpecStats {
    fn record(&mut self, drafted: usize, accepted: usize) {
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

    fn finish(&mut self) {
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

impl Engine {
    /// [`Engine::generate`] with speculative decoding: each step, `drafter` proposes as
    /// many tokens as `ctl` picks (at most the logit rows this engine was loaded with, less
    /// one), the target verifies them in one pass, and the kept tokens (plus the target's
    /// own next token) are emitted through `on_token`. Greedy output is identical to
    /// [`Engine::generate`]'s; sampled output follows the same distribution. Returns the
    /// generation and the speculation counts.
    pub fn generate_speculative(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        drafter: &mut dyn Drafter,
        ctl: &mut Controller,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<(Generation, SpecStats), SpecError> {
        self.generate_speculative_parts(&[PromptPart::Tokens(prompt)], opts, drafter, ctl, on_token)
    }

    /// [`Engine::generate_speculative`] after a prompt made of parts (text and images, see
    /// [`Engine::generate_parts`]). With images only the MTP drafter may speculate (its
    /// block takes the image rows as its inputs); greedy output is identical to
    /// [`Engine::generate_parts`]'s.
    pub fn generate_speculative_parts(
        &mut self,
        parts: &[PromptPart],
        opts: &GenerateOptions,
        drafter: &mut dyn Drafter,
        ctl: &mut Controller,
        on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<(Generation, SpecStats), SpecError> {
        let d = self.model.hp.n_embd;
        let parts: Vec<PromptPart> = parts.iter().copied().filter(|p| !p.is_empty(d)).collect();
        let images = parts.iter().any(|p| matches!(p, PromptPart::Embeddings(_)));
        let r = self.speculate(&parts, images, opts, drafter, ctl, on_token);
        if images {
            // The cache's token list holds the images' placeholder ids: nothing to reuse,
            // whether generation ended or failed.
            self.cached.clear();
        }
        r
    }

    /// The body of [`Engine::generate_speculative_parts`] (`parts` without empty ones).
    fn speculate(
        &mut self,
        parts: &[PromptPart],
        images: bool,
        opts: &GenerateOptions,
        drafter: &mut dyn Drafter,
        ctl: &mut Controller,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<(Generation, SpecStats), SpecError> {
        opts.sampling.validate().map_err(EngineError::Sampling)?;
        let d = self.model.hp.n_embd;
        if images && !drafter.is_mtp() {
            return Err(SpecError::ImagesNeedMtp);
        }
        // The prompt's ids; an image's rows take placeholders (never read: only the tokens
        // generated after the prompt are drafted from).
        let prompt: Vec<u32> = parts
            .iter()
            .flat_map(|p| match *p {
                PromptPart::Tokens(t) => t.to_vec(),
                PromptPart::Embeddings(rows) => vec![0; rows.data.len() / d.max(1)],
            })
            .collect();
        let prompt = &prompt[..];
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if prompt.len() + opts.max_tokens > self.n_ctx {
            return Err(EngineError::ContextFull {
                prompt: prompt.len(),
                generate: opts.max_tokens,
                n_ctx: self.n_ctx,
            }
            .into());
        }
        let vocab = self.model.hp.n_vocab;
        let greedy = opts.sampling.temperature <= 0.0;
        let max_draft = MAX_DRAFT.min(self.max_logit_rows.saturating_sub(1));
        let mut sampler = Sampler::new(opts.sampling.clone(), vocab);
        for p in parts {
            if let PromptPart::Tokens(t) = p {
                for &t in *t {
                    sampler.accept(t);
                }
            }
        }
        let mut stats = SpecStats {
            drafter: drafter.name().to_string(),
            ..SpecStats::default()
        };
        let mut out = Generation {
            finish_reason: "length",
            ..Generation::default()
        };
        out.tokens.reserve(opts.max_tokens);
        let mut history: Vec<u32> = Vec::with_capacity(prompt.len() + opts.max_tokens + 1);
        history.extend_from_slice(prompt);
        let mut emit = Emitter::new();
        let mut top = Vec::with_capacity(opts.logprobs);
        let eog: Vec<u32> = self.tokenizer.eog_ids().to_vec();
        let mut masked = vec![0.0; if opts.ignore_eos { vocab } else { 0 }];
        let mut scratch = Verify {
            q: if greedy { Vec::new() } else { vec![0.0; vocab] },
            resid: Vec::with_capacity(if greedy { 0 } else { vocab }),
        };
        let mut draft = Draft::default();
        let mut picked: Vec<(u32, usize)> = Vec::with_capacity(MAX_DRAFT + 1);

        // The prompt, as `generate` evaluates it (the cached prefix reused); with the MTP
        // drafter, chunk by chunk with the block's passes (no prefix reuse).
        let mut mtp = if drafter.is_mtp() {
            if !self.has_mtp() {
                return Err(SpecError::NoMtp);
            }
            Some(crate::mtp::MtpState::new(
                self.n_batch,
                self.model.hp.n_embd,
            ))
        } else {
            None
        };
        let t0 = Instant::now();
        match mtp.as_mut() {
            Some(st) if images => {
                self.cached.clear();
                self.mtp_prefill_parts(st, parts)?;
            }
            Some(st) => {
                self.cached.clear();
                self.mtp_prefill(st, prompt)?;
            }
            None => {
                let reuse = self.reusable_prefix(prompt);
                self.eval(0, &prompt[reuse..], reuse, false)?;
            }
        }
        self.cached.extend_from_slice(prompt);
        drafter.prepare(prompt)?;
        out.timings.prompt_tokens = prompt.len();
        out.timings.prompt_time = t0.elapsed();
        let t1 = Instant::now();

        // Logit rows ready: row i follows the history up to the i-th token of the last pass.
        let mut rows_ready = 1;
        let mut n_draft = 0usize;
        // The last pass's (drafted, verify seconds, draft seconds, catch-up seconds),
        // scored once its tokens are picked.
        let mut pending: Option<(usize, f64, f64, f64)> = None;
        loop {
            // Pick tokens from the rows: the kept drafts, then the target's own.
            picked.clear();
            let logits = self.backend.read(self.model.acts.logits, rows_ready)?;
            let mut kept = 0;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let drafted = (i < n_draft).then(|| draft.tokens[i]);
                // As `generate` picks: ignoring EOS, greedy is a plain argmax without them
                // and sampling sees them masked; otherwise the sampler's chain.
                let (id, keep) = if opts.ignore_eos && greedy {
                    let id = argmax_excluding(row, &eog);
                    (id, drafted == Some(id))
                } else {
                    let row: &[f32] = if opts.ignore_eos {
                        masked.copy_from_slice(row);
                        for &e in &eog {
                            masked[e as usize] = f32::NEG_INFINITY;
                        }
                        &masked
                    } else {
                        row
                    };
                    match drafted {
                        Some(d) if !greedy => {
                            verify_sampled(&mut sampler, row, &draft, i, d, &mut scratch)
                        }
                        _ => {
                            let id = sampler.sample(row);
                            (id, drafted == Some(id))
                        }
                    }
                };
                sampler.accept(id);
                picked.push((id, i));
                if keep {
                    kept += 1;
                } else {
                    break;
                }
            }
            if let Some((drafted, tv, td, cu)) = pending.take() {
                stats.record(drafted, kept);
                ctl.update_with_catch_up(drafted, kept, tv, td, cu);
            }

            // Emit them in order, as `generate` does.
            let mut done = false;
            for &(id, row_i) in &picked {
                if opts.logprobs > 0 {
                    let row = &self.backend.read(self.model.acts.logits, rows_ready)?
                        [row_i * vocab..(row_i + 1) * vocab];
                    top_logprobs(row, opts.logprobs, &mut top);
                    out.logprobs.push(top.clone());
                }
                let before = out.tokens.len();
                done = emit.push(&self.tokenizer, opts, &mut out, id, &mut on_token);
                if out.tokens.len() > before {
                    history.push(id);
                }
                if done {
                    break;
                }
            }
            // The state is valid for the history but its last token (evaluated next, with
            // the new drafts); what the rejected drafts left is rolled back.
            let pos = history.len() - 1;
            self.model.rollback(&mut self.backend, 0, pos)?;
            self.cached.truncate(pos);
            let have = self.cached.len();
            self.cached.extend_from_slice(&history[have..pos]);
            if done {
                break;
            }

            // Draft, then verify the last token and the drafts in one pass.
            let remaining = opts.max_tokens - out.tokens.len();
            let room = self.n_ctx - history.len();
            let k = ctl.choose(remaining.saturating_sub(1).min(room).min(max_draft));
            draft.clear();
            let td = Instant::now();
            let mut catch_up = 0.0;
            if k > 0 {
                catch_up = match mtp.as_mut() {
                    Some(st) => self.mtp_propose(st, &history, k, &mut draft)?,
                    None => drafter.propose(&history, k, &mut draft)?,
                };
                draft.tokens.truncate(k);
                drafter.record(pos, &draft.tokens);
            }
            let t_draft = (td.elapsed().as_secs_f64() - catch_up).max(0.0);
            n_draft = draft.tokens.len();
            let mut batch = [0u32; MAX_DRAFT + 1];
            batch[0] = history[pos];
            batch[1..=n_draft].copy_from_slice(&draft.tokens);
            let tv = Instant::now();
            let cached = std::mem::take(&mut self.cached);
            let result = self
                .eval_rows(0, &batch[..=n_draft], pos, 0)
                .map(|r| r.len() / vocab);
            self.cached = cached;
            rows_ready = match result {
                Ok(r) => r,
                Err(e) => {
                    self.cached.clear();
                    return Err(e.into());
                }
            };
            self.cached.push(history[pos]);
            if let Some(st) = mtp.as_mut() {
                self.mtp_keep_hidden(st, pos, n_draft + 1)?;
            }
            pending = Some((n_draft, tv.elapsed().as_secs_f64(), t_draft, catch_up));
        }
        emit.finish(&mut out);
        out.timings.generation_time = t1.elapsed();
        stats.finish();
        Ok((out, stats))
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

    /// A draft model with several sequences drafts for each exactly as a one-sequence
    /// drafter would, whatever the order of the calls, with each sequence's own sampling.
    #[test]
    fn a_multi_sequence_draft_model_keeps_sequences_apart() {
        let path = registry::test_model("smollm2-135m");
        let opts = EngineOptions {
            n_ctx: 128,
            n_batch: 64,
            n_seq: 1,
            max_logit_rows: 1,
            n_threads: 2,
            gpu_layers: crate::GpuLayers::for_tests(),
        };
        let target = Engine::load(&path, &opts).unwrap();
        let greedy = SamplingParams::greedy();
        let sampled = SamplingParams {
            temperature: 0.8,
            seed: 11,
            ..SamplingParams::default()
        };
        let mut multi = ModelDrafter::load_for(&path, &target, &opts, &greedy, 2).unwrap();
        assert_eq!(multi.n_seq(), 2);
        let mut one = [
            ModelDrafter::load(&path, &target, &opts, &greedy).unwrap(),
            ModelDrafter::load(&path, &target, &opts, &sampled).unwrap(),
        ];
        let mut hist = [
            target
                .tokenizer
                .encode("The capital of France is", true, true),
            target.tokenizer.encode("1, 2, 3, 4, 5, 6,", true, true),
        ];
        multi.start_seq(0, &hist[0], &greedy).unwrap();
        multi.start_seq(1, &hist[1], &sampled).unwrap();
        for (d, h) in one.iter_mut().zip(&hist) {
            d.prepare(h).unwrap();
        }
        for step in 0..4 {
            for seq in [1, 0] {
                let (mut a, mut b) = (Draft::default(), Draft::default());
                multi.propose_seq(seq, &hist[seq], 3, &mut a).unwrap();
                one[seq].propose(&hist[seq], 3, &mut b).unwrap();
                assert_eq!(a.tokens, b.tokens, "step {step}, sequence {seq}");
                assert_eq!(a.tokens.len(), 3);
                if seq == 1 {
                    for i in 0..3 {
                        assert_eq!(a.dists[i], b.dists[i]);
                        assert!(a.q(i) > 0.0);
                    }
                } else {
                    assert!(a.dists.iter().all(|d| d.is_empty()));
                }
                // Keep two drafts, then something else (as a rejection would).
                let keep = a.tokens[..2].to_vec();
                hist[seq].extend_from_slice(&keep);
                hist[seq].push(13 + step as u32);
            }
        }
        // A new request in a sequence starts from an empty cache.
        multi.reset_seq(0);
        let (mut a, mut b) = (Draft::default(), Draft::default());
        multi.propose_seq(0, &hist[0], 2, &mut a).unwrap();
        one[0].prepare(&[]).unwrap();
        one[0].propose(&hist[0], 2, &mut b).unwrap();
        assert_eq!(a.tokens, b.tokens);
    }

    #[test]
    fn ngram_proposes_what_followed_the_latest_match() {
        let mut d = NgramDrafter::default();
        let mut draft = Draft::default();
        let h = [1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 1, 2, 3];
        d.propose(&h, 3, &mut draft).unwrap();
        assert_eq!(draft.tokens, [5, 6, 1]);
        draft.clear();
        d.propose(&[1, 2, 3, 4], 3, &mut draft).unwrap();
        assert!(draft.tokens.is_empty());
    }

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
