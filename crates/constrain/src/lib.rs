//! Constrained output: JSON schemas, Lark and GBNF grammars compiled by llguidance into a
//! per-token mask over our vocabulary, consumed token by token as a sequence is generated.
//!
//! [`Vocabulary`] is built once per model from the tokenizer's token bytes (a GGUF has no
//! Hugging Face tokenizer file); [`Vocabulary::compile`] turns a [`Grammar`] into a
//! [`Constraint`], one per generated sequence. A constraint may start at once or only after
//! a trigger string appears in the output ([`Start::After`]: a tool call in `auto` mode, an
//! answer after the model's reasoning).

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use tokenizer::{attr, Tokenizer};

pub mod tools;

/// Why a grammar could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    /// The grammar or schema does not compile; the text says why.
    #[error("{0}")]
    Compile(String),
    /// The vocabulary could not be turned into a token trie.
    #[error("the vocabulary cannot be used for constrained output: {0}")]
    Vocabulary(String),
}

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (start rule `start`).
    Lark(String),
    /// A grammar in llama.cpp's GBNF (start rule `root`), converted to Lark.
    Gbnf(String),
}

impl Grammar {
    /// A grammar given as text, as the server's `grammar` and the CLI's `--grammar` take
    /// it: after a leading `%llguidance` line (llama.cpp's marker; the rest of that line is
    /// dropped) llguidance's Lark; else GBNF when it looks like GBNF (it has `::=`); else
    /// Lark.
    pub fn from_text(s: &str) -> Grammar {
        if let Some(rest) = s.trim_start().strip_prefix("%llguidance") {
            Grammar::Lark(rest.trim_start_matches(|c: char| c != '\n').to_string())
        } else if gbnf::looks_like_gbnf(s) {
            Grammar::Gbnf(s.to_string())
        } else {
            Grammar::Lark(s.to_string())
        }
    }
}

/// When a constraint starts applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From the first generated token.
    Now,
    /// Once the generated text ends with this string (the grammar matches what follows it).
    After(String),
}

/// The vocabulary as llguidance sees it, and the grammar compiler built on it; shared by
/// every sequence of a model.
#[derive(Clone)]
pub struct Vocabulary {
    factory: Arc<ParserFactory>,
    /// Each token's bytes (special tokens: `0xFF` + their text), for triggers.
    bytes: Arc<Vec<Vec<u8>>>,
    /// The width of a logit row (the model's vocabulary, possibly past the tokenizer's).
    n_vocab: usize,
    /// End-of-generation ids.
    eog: Vec<u32>,
}

impl fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocabulary")
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

/// Our token trie for llguidance; strings are split greedily (llguidance only needs this
/// for forced tokens, which we do not use).
struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }

    /// Greedy splitting is not how the model's tokenizer splits: llguidance must not limit
    /// forced text to it (every token that fits the grammar stays allowed).
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

impl Vocabulary {
    /// The vocabulary of `tok`, for logit rows of `n_vocab` entries (ids past the
    /// tokenizer's are never allowed). Control tokens are special (`<|im_end|>` in a Lark
    /// grammar names the token, not its spelling); end-of-generation tokens end a grammar.
    pub fn new(tok: &Tokenizer, n_vocab: usize) -> Result<Vocabulary, ConstrainError> {
        let n = n_vocab.max(tok.vocab_size());
        let mut words = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let a = tok.vocab().attr(id);
            let w = match tok.token_text(id) {
                None => Vec::new(),
                Some(text) if attr::is_special(a) || a & attr::UNUSED != 0 => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(text.as_bytes());
                    w
                }
                Some(_) => tok.piece(id, false).to_vec(),
            };
            words.push(w);
        }
        let eog: Vec<u32> = tok
            .eog_ids()
            .iter()
            .copied()
            .filter(|&e| (e as usize) < n)
            .collect();
        let Some(&eos) = eog.first() else {
            return Err(ConstrainError::Vocabulary(
                "the model has no end-of-generation token".into(),
            ));
        };
        let info = TokRxInfo::new(n as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        let env: TokEnv = Arc::new(Env { trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstrainError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Vocabulary {
            factory: Arc::new(factory),
            bytes: Arc::new(words),
            n_vocab,
            eog,
        })
    }

    /// The width of the logit rows the masks apply to.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Compiles `grammar` into a constraint starting as `start` says. An invalid schema or
    /// grammar is an error that says why.
    pub fn compile(&self, grammar: &Grammar, start: Start) -> Result<Constraint, ConstrainError> {
        let top = match grammar {
            Grammar::JsonObject => {
                TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"}))
            }
            Grammar::JsonSchema(s) => {
                if !(s.is_object() || s.is_boolean()) {
                    return Err(ConstrainError::Compile(
                        "a JSON schema must be an object".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(s.clone())
            }
            Grammar::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
            Grammar::Gbnf(g) => TopLevelGrammar::from_lark(gbnf_to_lark(g)?),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| ConstrainError::Compile(clean(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstrainError::Compile(clean(&e)));
        }
        Ok(Constraint {
            vocab: self.clone(),
            matcher,
            waiting: match start {
                Start::Now => None,
                Start::After(t) => Some(Trigger {
                    text: t.into_bytes(),
                    tail: Vec::new(),
                }),
            },
            mask: None,
            failed: false,
        })
    }
}

/// The GBNF converter's entry (kept apart so the converter can live in its own module).
fn gbnf_to_lark(g: &str) -> Result<String, ConstrainError> {
    gbnf::to_lark(g).map_err(|e| ConstrainError::Compile(format!("GBNF grammar: {e}")))
}

pub mod gbnf;

/// llguidance's messages, on one line.
fn clean(e: &str) -> String {
    e.trim().replace('\n', "; ")
}

/// A trigger not seen yet: its bytes and the last bytes of the output.
#[derive(Clone)]
struct Trigger {
    text: Vec<u8>,
    tail: Vec<u8>,
}

/// One sequence's constraint: which tokens may come next, updated with each token.
pub struct Constraint {
    vocab: Vocabulary,
    matcher: Matcher,
    /// The trigger it waits for (None: applying).
    waiting: Option<Trigger>,
    /// The mask of the current state, once computed.
    mask: Option<SimpleVob>,
    /// The matcher failed (a token it could not take): only end-of-generation is allowed.
    failed: bool,
}

impl Clone for Constraint {
    fn clone(&self) -> Constraint {
        Constraint {
            vocab: self.vocab.clone(),
            matcher: self.matcher.deep_clone(),
            waiting: self.waiting.clone(),
            mask: self.mask.clone(),
            failed: self.failed,
        }
    }
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("active", &self.is_active())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Constraint {
    /// Whether the grammar applies now (its trigger, if any, was generated).
    pub fn is_active(&self) -> bool {
        self.waiting.is_none()
    }

    /// Whether the grammar is complete and only end-of-generation may follow.
    pub fn is_finished(&self) -> bool {
        self.is_active() && (self.failed || self.matcher.is_stopped())
    }

    /// Computes the mask of the current state now (it is kept until the next token), so a
    /// later [`Constraint::apply`] is quick; does nothing while waiting for a trigger.
    pub fn prepare(&mut self) {
        if self.is_active() && self.mask.is_none() {
            let m = if self.failed {
                None
            } else {
                self.matcher.compute_mask_or_eos().ok()
            };
            let m = m.filter(|m| !m.is_zero()).unwrap_or_else(|| {
                self.failed = true;
                self.eog_set()
            });
            self.mask = Some(m);
        }
    }

    fn eog_set(&self) -> SimpleVob {
        let mut s = SimpleVob::alloc(self.vocab.bytes.len());
        for &e in &self.vocab.eog {
            s.allow_token(e);
        }
        s
    }

    /// Sets every logit the grammar does not allow next to −∞ (nothing while waiting for a
    /// trigger). At least one end-of-generation token stays allowed when the grammar is
    /// complete or broken.
    pub fn apply(&mut self, logits: &mut [f32]) {
        if !self.is_active() {
            return;
        }
        self.prepare();
        let Some(mask) = self.mask.as_ref() else {
            return;
        };
        // A word of the mask at a time: whole words allowed or refused are the common case
        // (a bit at a time costs ~90 µs on a 151,936-token row, this ~10 µs).
        let n = mask.len().min(logits.len());
        let (inside, past) = logits.split_at_mut(n);
        for (chunk, &w) in inside.chunks_mut(32).zip(mask.as_slice()) {
            if w == u32::MAX {
                continue;
            }
            if w == 0 {
                chunk.fill(f32::NEG_INFINITY);
                continue;
            }
            // Branch-free, so that it vectorizes.
            for (j, l) in chunk.iter_mut().enumerate() {
                let keep = (w >> j) & 1 != 0;
                *l = if keep { *l } else { f32::NEG_INFINITY };
            }
        }
        past.fill(f32::NEG_INFINITY);
    }

    /// Whether token `id` may come next.
    pub fn allows(&mut self, id: u32) -> bool {
        if !self.is_active() {
            return true;
        }
        self.prepare();
        self.mask
            .as_ref()
            .is_some_and(|m| (id as usize) < m.len() && m.is_allowed(id))
    }

    /// Takes token `id` as the next of the output.
    pub fn consume(&mut self, id: u32) {
        self.mask = None;
        if let Some(t) = self.waiting.as_mut() {
            let Some(bytes) = self.vocab.bytes.get(id as usize) else {
                return;
            };
            t.tail.extend_from_slice(bytes);
            let keep = t.text.len();
            if let Some(at) = find(&t.tail, &t.text) {
                // Whatever followed the trigger in the same token is the grammar's first text.
                let rest = t.tail[at + keep..].to_vec();
                self.waiting = None;
                if !rest.is_empty() {
                    let toks = self.matcher.tok_env().map(|e| e.tokenize_bytes(&rest));
                    let ok = toks.is_ok_and(|t| self.matcher.consume_tokens(&t).is_ok());
                    self.failed |= !ok;
                }
            } else if t.tail.len() > keep {
                t.tail.drain(..t.tail.len() - keep);
            }
            return;
        }
        if self.failed || self.matcher.is_stopped() {
            return;
        }
        if self.matcher.consume_token(id).is_err() {
            self.failed = true;
        }
    }

    /// How many of `tokens` (drafts, in order) the grammar allows from the current state,
    /// without taking them. While waiting for a trigger every token is allowed.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> usize {
        if !self.is_active() {
            return tokens.len();
        }
        if self.failed {
            return 0;
        }
        self.matcher.validate_tokens(tokens).unwrap_or(0)
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
