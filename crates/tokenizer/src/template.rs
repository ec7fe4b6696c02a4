//! Chat templates (placeholder until the template module lands; the helper replaces this file).

/// A rendered prompt and where the users' text lies in it.
pub struct RenderedPrompt {
    /// The prompt.
    pub text: String,
    /// Byte ranges holding text users sent.
    pub user_spans: Vec<std::ops::Range<usize>>,
}
