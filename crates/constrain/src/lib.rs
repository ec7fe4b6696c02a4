//! Constrained output: JSON schemas, Lark and GBNF grammars compiled by llguidance into a
//! per-token mask over our vocabulary, consumed token by token as a sequence is generated.

pub mod gbnf;
