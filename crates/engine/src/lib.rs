//! Running a loaded model: generation (plain and speculative, one per-sequence round the
//! server's scheduler drives too), the sampling chain, stop strings, batching and perplexity.

pub mod backend;
pub mod image;
pub mod mtp;
pub mod multi;
pub mod perplexity;
pub mod pick;
pub mod plan;
mod positions;
pub mod sampling;
mod saved;
pub mod session;
pub mod speculative;
pub mod stop;

pub use backend::GpuLayers;
pub use image::{image_prompt, image_runs, image_tokens, split_rendered, ImagePrompt, ImageTokens};
pub use session::{
    Engine, EngineError, EngineOptions, GenerateOptions, Generation, ImageRows, PromptPart, Timings,
};
