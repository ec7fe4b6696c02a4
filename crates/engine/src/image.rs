//! Where an image goes in a prompt: the model's begin/end tokens around its embeddings, the
//! text on each side tokenized separately, and how the image rows attend to each other.

use model::Family;

use crate::{Engine, EngineError};

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
/// model's image begin/end tokens. Gemma 3: `<start_of_image>` … `<end_of_image>`, rows
/// attending both ways.
pub fn image_prompt(
    engine: &Engine,
    prompt: &str,
    marker: &str,
) -> Result<ImagePrompt, EngineError> {
    let (begin, end, non_causal) = match engine.model.family {
        Family::Gemma3 => ("<start_of_image>", "<end_of_image>", true),
        f => {
            return Err(EngineError::Embeddings(format!(
                "images are not supported for the {f:?} family yet"
            )))
        }
    };
    let tok = &engine.tokenizer;
    let special = |s: &str| -> Result<u32, EngineError> {
        match tok.encode(s, false, true)[..] {
            [id] => Ok(id),
            _ => Err(EngineError::Embeddings(format!(
                "the vocabulary has no {s} token"
            ))),
        }
    };
    let (text_before, text_after) = prompt.split_once(marker).unwrap_or(("", prompt));
    let mut before = tok.encode(text_before, true, true);
    before.push(special(begin)?);
    let mut after = vec![special(end)?];
    after.extend(tok.encode(text_after, false, true));
    Ok(ImagePrompt {
        before,
        after,
        non_causal,
    })
}
