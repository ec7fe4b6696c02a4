//! A small draft model sharing the target's tokenizer, run in its own engine with a
//! sequence (cache contents and sampler) per target sequence it drafts for.

use std::path::Path;
use std::time::Instant;

use super::{Draft, SpecError, MAX_DRAFT};
use crate::sampling::{argmax_excluding, Sampler, SamplingParams};
use crate::session::{Engine, EngineOptions};

/// A small model that shares the target's tokenizer, run one token at a time in its own
/// engine; its KV cache follows the target's history (only the tokens that changed are
/// evaluated again).
///
/// Loaded with several sequences ([`ModelDrafter::load_for`]), it drafts for each of them
/// in turn ([`ModelDrafter::propose_seq`]), each with its own cache contents and sampler:
/// a server drafts for every slot with one draft engine. [`Engine::generate_speculative`]
/// drafts with sequence 0.
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

    /// [`super::DraftSource::propose`] for sequence `seq`: up to `k` tokens continuing `history`,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            ..EngineOptions::default()
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
            d.prepare_seq(0, h).unwrap();
        }
        for step in 0..4 {
            for seq in [1, 0] {
                let (mut a, mut b) = (Draft::default(), Draft::default());
                multi.propose_seq(seq, &hist[seq], 3, &mut a).unwrap();
                one[seq].propose_seq(0, &hist[seq], 3, &mut b).unwrap();
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
        one[0].prepare_seq(0, &[]).unwrap();
        one[0].propose_seq(0, &hist[0], 2, &mut b).unwrap();
        assert_eq!(a.tokens, b.tokens);
    }
}
