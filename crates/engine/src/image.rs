//! Where an image goes in a prompt: the model's begin/end tokens around its embeddings, the
//! text on each side tokenized separately, and how the image rows attend to each other.

use model::Family;
use tokenizer::{RenderedPrompt, Tokenizer};

use crate::{Engine, EngineError};

/// The tokens around an image for one model, and how its rows attend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageTokens {
    /// The token just before the image rows.
    pub begin: u32,
    /// The token just after them.
    pub end: u32,
    /// Whether the image rows attend to each other both ways (Gemma 3).
    pub non_causal: bool,
}

/// The image begin/end tokens of `family` in `tok`'s vocabulary. Gemma 3:
/// `<start_of_image>` … `<end_of_image>`, rows attending both ways; Qwen3.5:
/// `<|vision_start|>` … `<|vision_end|>`, causal, with 2-D rotary positions (see
/// [`crate::ImageRows::grid`]); other families are not supported yet.
pub fn image_tokens(tok: &Tokenizer, family: Family) -> Result<ImageTokens, EngineError> {
    let (begin, end, non_causal) = match family {
        Family::Gemma3 => ("<start_of_image>", "<end_of_image>", true),
        Family::Qwen35 => ("<|vision_start|>", "<|vision_end|>", false),
        f => {
            return Err(EngineError::Embeddings(format!(
                "images are not supported for the {f:?} family yet"
            )))
        }
    };
    let special = |s: &str| -> Result<u32, EngineError> {
        match tok.encode(s, false, true)[..] {
            [id] => Ok(id),
            _ => Err(EngineError::Embeddings(format!(
                "the vocabulary has no {s} token"
            ))),
        }
    };
    Ok(ImageTokens {
        begin: special(begin)?,
        end: special(end)?,
        non_causal,
    })
}

/// A prompt split around one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePrompt {
    /// Tokens before the image (BOS when the model wants one), ending with its begin token.
    pub before: Vec<u32>,
    /// Tokens after the image, starting with its end token.
    pub after: Vec<u32>,
    /// Whether the image rows attend to each other both ways (Gemma 3).
    pub non_causal: bool,
}

/// Splits `prompt` at the first `marker` (no marker: the image comes first) and tokenizes
/// each side on its own, as llama.cpp does (BPE never merges across the image), adding the
/// model's image begin/end tokens (see [`image_tokens`]).
pub fn image_prompt(
    engine: &Engine,
    prompt: &str,
    marker: &str,
) -> Result<ImagePrompt, EngineError> {
    let t = image_tokens(&engine.tokenizer, engine.model.family)?;
    let tok = &engine.tokenizer;
    let (text_before, text_after) = prompt.split_once(marker).unwrap_or(("", prompt));
    let mut before = tok.encode(text_before, true, true);
    before.push(t.begin);
    let mut after = vec![t.end];
    after.extend(tok.encode(text_after, false, true));
    Ok(ImagePrompt {
        before,
        after,
        non_causal: t.non_causal,
    })
}

/// Splits a rendered chat prompt at each `marker` (one per image), keeping each piece's user
/// ranges (encoded without special tokens).
pub fn split_rendered(p: &RenderedPrompt, marker: &str) -> Vec<RenderedPrompt> {
    let mut out = Vec::new();
    let mut start = 0;
    let ends = p
        .text
        .match_indices(marker)
        .map(|(i, _)| i)
        .chain(std::iter::once(p.text.len()));
    for end in ends {
        let user_spans = p
            .user_spans
            .iter()
            .filter_map(|r| {
                let (a, b) = (r.start.max(start), r.end.min(end));
                (a < b).then(|| a - start..b - start)
            })
            .collect();
        out.push(RenderedPrompt {
            text: p.text[start..end].to_owned(),
            user_spans,
        });
        start = end + marker.len();
    }
    out
}

/// The token runs of a rendered chat prompt around its images (one `marker` each), as
/// [`image_prompt`] makes them for one: each piece tokenized on its own (BOS before the
/// first), a run before an image ending with its begin token, one after it starting with its
/// end token. `n_images + 1` runs; an error when the markers are not `n_images`.
pub fn image_runs(
    tok: &Tokenizer,
    rendered: &RenderedPrompt,
    marker: &str,
    t: ImageTokens,
    n_images: usize,
) -> Result<Vec<Vec<u32>>, EngineError> {
    let pieces = split_rendered(rendered, marker);
    if pieces.len() != n_images + 1 {
        return Err(EngineError::Embeddings(format!(
            "the prompt places {} images; {n_images} were given",
            pieces.len() - 1
        )));
    }
    let last = pieces.len() - 1;
    Ok(pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut run = Vec::new();
            if i > 0 {
                run.push(t.end);
            }
            run.extend(tok.encode_prompt(piece, i == 0));
            if i < last {
                run.push(t.begin);
            }
            run
        })
        .collect())
}
