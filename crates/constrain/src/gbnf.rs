//! GBNF (llama.cpp's grammar format) converted to llguidance's Lark. (Placeholder until
//! the converter lands.)

/// A GBNF grammar that could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct GbnfError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Converts a GBNF grammar into Lark.
pub fn to_lark(_gbnf: &str) -> Result<String, GbnfError> {
    Err(GbnfError {
        line: 1,
        message: "GBNF is not supported yet".into(),
    })
}

/// Whether `src` looks like GBNF (it has `::=`) rather than Lark.
pub fn looks_like_gbnf(src: &str) -> bool {
    src.contains("::=")
}
