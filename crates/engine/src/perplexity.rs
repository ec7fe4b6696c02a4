//! Perplexity the way llama-perplexity measures it: the text cut into consecutive chunks of
//! `ctx` tokens, each evaluated on its own, only the second half of each chunk scored.

use crate::sampling::logprob_of;
use crate::{Engine, EngineError};

/// The result of a perplexity run.
#[derive(Clone, Debug)]
pub struct Perplexity {
    /// Final estimate: exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens in the text.
    pub tokens: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Running estimate after each chunk.
    pub running: Vec<f64>,
}

/// Measures perplexity over `text` with chunks of `ctx` tokens (`ctx` must fit one batch
/// and the engine's logit rows must hold ctx/2 rows). The first token of each chunk is
/// replaced by BOS when the model adds BOS. `max_chunks` stops early (like llama-perplexity's
/// `--chunks`). `on_chunk(i, running)` reports progress.
pub fn perplexity(
    engine: &mut Engine,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, EngineError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let tokens = engine.tokenizer.encode(text, true, true);
    let n_chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 || ctx < 4 {
        return Err(EngineError::ContextFull {
            prompt: tokens.len(),
            generate: 0,
            n_ctx: ctx,
        });
    }
    let bos = engine
        .tokenizer
        .adds_bos()
        .then(|| engine.tokenizer.bos())
        .flatten();
    let first = ctx / 2;
    let vocab = engine.model.hp.n_vocab;
    let mut nll = 0.0f64;
    let mut count = 0usize;
    let mut running = Vec::with_capacity(n_chunks);
    let mut chunk = Vec::with_capacity(ctx);
    for i in 0..n_chunks {
        chunk.clear();
        chunk.extend_from_slice(&tokens[i * ctx..(i + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        // Row j (first <= j < ctx - 1) predicts token j + 1.
        let logits = engine.eval_rows(0, &chunk, 0, first)?;
        for (r, j) in (first..ctx - 1).enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            nll -= logprob_of(row, tokens[i * ctx + j + 1]) as f64;
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        on_chunk(i, ppl);
    }
    Ok(Perplexity {
        ppl: *running.last().unwrap_or(&f64::NAN),
        chunks: n_chunks,
        tokens: tokens.len(),
        scored: count,
        running,
    })
}
