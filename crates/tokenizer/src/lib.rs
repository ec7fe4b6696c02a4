//! Tokenizers built from GGUF metadata (byte-level BPE, SentencePiece), special tokens, a
//! UTF-8-safe streaming detokenizer, and chat templates rendered from the file's Jinja.
//!
//! Encoding follows llama.cpp exactly: special-token text is cut out first (longest first),
//! then each remaining fragment goes through the pre-tokenizer and BPE, or SentencePiece.

mod bpe;
mod pretokenize;
mod spm;
mod stream;
pub mod template;
mod vocab;

use std::ops::Range;

use aho_corasick::AhoCorasick;

pub use stream::StreamDecoder;
pub use template::{ChatTemplate, Message, RenderOptions, RenderedPrompt, TemplateError};
pub use vocab::{attr, ModelKind, Vocab};

/// Why a tokenizer could not be built from a file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A `tokenizer.ggml.*` key that is missing, ill-typed or inconsistent with the others.
    #[error("tokenizer metadata {key:?}: {reason}")]
    Metadata {
        /// The metadata key.
        key: String,
        /// What is wrong with it, in words.
        reason: String,
    },
    /// `tokenizer.ggml.model` names an algorithm other than `gpt2` or `llama`; holds the name.
    #[error("unsupported tokenizer model {0:?} (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement; holds the name.
    #[error(
        "unsupported pre-tokenizer {0:?} (tokenizer.ggml.pre); supported: default, gpt2, \
         llama3, llama-bpe, smollm, starcoder, qwen2, qwen35, deepseek-llm and a few aliases"
    )]
    UnsupportedPre(String),
    /// A pre-tokenizer's regular expression did not compile; holds the regex crate's message.
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
}

/// A piece of input text, or a special token already cut out of it.
#[derive(Clone, Debug, PartialEq)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// A tokenizer: vocabulary plus the algorithm its file names.
pub struct Tokenizer {
    vocab: Vocab,
    algo: Algo,
    /// Finds which special texts occur in an input at all, so the exact longest-first cut
    /// only looks for those.
    special_finder: Option<AhoCorasick>,
    /// Each token's bytes when printed as ordinary text (empty for control tokens), and the
    /// raw text of every token for printing specials; both flat with offsets.
    pieces: Vec<u8>,
    piece_at: Vec<u32>,
}

enum Algo {
    Bpe(Box<bpe::Bpe>, pretokenize::PreTokenizer),
    Spm,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_metadata(m: &gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::from_metadata(m)?;
        let algo = match vocab.kind {
            ModelKind::Bpe => Algo::Bpe(
                Box::new(bpe::Bpe::from_metadata(m, &vocab)?),
                pretokenize::PreTokenizer::new(&vocab.pre)?,
            ),
            ModelKind::Spm => Algo::Spm,
        };
        let special_finder = if vocab.special_by_length.is_empty() {
            None
        } else {
            let pats: Vec<&str> = vocab
                .special_by_length
                .iter()
                .map(|&i| vocab.texts[i as usize].as_str())
                .collect();
            AhoCorasick::new(pats).ok()
        };
        let mut t = Tokenizer {
            vocab,
            algo,
            special_finder,
            pieces: Vec::new(),
            piece_at: Vec::new(),
        };
        t.build_pieces();
        Ok(t)
    }

    fn build_pieces(&mut self) {
        let n = self.vocab.texts.len();
        let mut pieces = Vec::with_capacity(n * 6);
        let mut at = Vec::with_capacity(n + 1);
        for id in 0..n {
            at.push(pieces.len() as u32);
            let text = &self.vocab.texts[id];
            let a = self.vocab.attrs[id];
            if attr::is_special(a) || a & attr::USER_DEFINED != 0 {
                if !attr::is_special(a) {
                    pieces.extend_from_slice(text.as_bytes());
                }
            } else if a & attr::NORMAL != 0 {
                match &self.algo {
                    Algo::Bpe(bpe, _) => {
                        for c in text.chars() {
                            match bpe.char_to_byte.get(&c) {
                                Some(&b) => pieces.push(b),
                                None => {
                                    let mut buf = [0u8; 4];
                                    pieces.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                }
                            }
                        }
                    }
                    Algo::Spm => {
                        for c in text.chars() {
                            if c == '\u{2581}' {
                                pieces.push(b' ');
                            } else {
                                let mut buf = [0u8; 4];
                                pieces.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
            } else if a & attr::BYTE != 0 {
                if let Some(b) = parse_byte_token(text) {
                    pieces.push(b);
                }
            }
        }
        at.push(pieces.len() as u32);
        self.pieces = pieces;
        self.piece_at = at;
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.texts.len()
    }

    /// The beginning-of-sequence id, if any.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    /// The end-of-sequence id, if any.
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// The end-of-turn id (`<|im_end|>`, `<end_of_turn>`, ...), if any.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.eot
    }

    /// The padding id, if any.
    pub fn pad(&self) -> Option<u32> {
        self.vocab.pad
    }

    /// Every id that ends generation (EOS, end-of-turn markers, ...), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// Whether BOS is added when `add_special` is asked for.
    pub fn adds_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// The stored text of a token (`Ġworld`, `▁the`, `<|im_end|>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The bytes a token prints as. Control tokens print their text only with `special`.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i >= self.vocab.texts.len() {
            return &[];
        }
        if special && attr::is_special(self.vocab.attrs[i]) {
            return self.vocab.texts[i].as_bytes();
        }
        &self.pieces[self.piece_at[i] as usize..self.piece_at[i + 1] as usize]
    }

    /// Encodes text. `add_special` adds BOS/EOS as the metadata says; `parse_special` turns
    /// special-token text such as `<|im_start|>` into its id (otherwise it is plain text).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.partition(text, parse_special, &[]);
        self.encode_fragments(text, &frags, add_special)
    }

    /// Encodes a rendered chat prompt: the template's own markers are special, while the
    /// text users sent (`user_spans`) is encoded with special parsing off.
    pub fn encode_prompt(&self, prompt: &RenderedPrompt, add_special: bool) -> Vec<u32> {
        let frags = self.partition(&prompt.text, true, &prompt.user_spans);
        self.encode_fragments(&prompt.text, &frags, add_special)
    }

    /// Decodes ids to text (invalid UTF-8 replaced). With `special`, control tokens print
    /// their text. A SentencePiece space prefix on the first token is removed.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let p = self.piece(id, special);
            if i == 0 && self.vocab.kind == ModelKind::Spm && self.vocab.add_space_prefix {
                bytes.extend_from_slice(p.strip_prefix(b" ").unwrap_or(p));
            } else {
                bytes.extend_from_slice(p);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Cuts special-token text out of `text`, longest token first, as llama.cpp does.
    /// Control and unknown tokens are cut only with `parse_special` and never inside
    /// `plain` ranges; user-defined tokens are always cut.
    fn partition(&self, text: &str, parse_special: bool, plain: &[Range<usize>]) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0..text.len())];
        if text.is_empty() {
            return Vec::new();
        }
        let Some(finder) = &self.special_finder else {
            return frags;
        };
        let mut present = vec![false; self.vocab.special_by_length.len()];
        let mut any = false;
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        let in_plain = |r: &Range<usize>| plain.iter().any(|p| r.start < p.end && p.start < r.end);
        for (k, &id) in self.vocab.special_by_length.iter().enumerate() {
            if !present[k] {
                continue;
            }
            let special = attr::is_special(self.vocab.attrs[id as usize]);
            if special && !parse_special {
                continue;
            }
            let needle = self.vocab.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = r.start;
                let mut search = r.start;
                while let Some(pos) = text[search..r.end].find(needle) {
                    let m = search + pos..search + pos + needle.len();
                    if special && in_plain(&m) {
                        search = m.start + text[m.start..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if m.start > start {
                        next.push(Fragment::Text(start..m.start));
                    }
                    next.push(Fragment::Token(id));
                    start = m.end;
                    search = m.end;
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            frags = next;
        }
        frags
    }

    fn encode_fragments(&self, text: &str, frags: &[Fragment], add_special: bool) -> Vec<u32> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            if let Some(b) = v.bos {
                out.push(b);
            }
        }
        match &self.algo {
            Algo::Bpe(bpe, pre) => {
                let mut words = Vec::new();
                let mut scratch = bpe::Scratch::default();
                for f in frags {
                    match f {
                        Fragment::Token(id) => out.push(*id),
                        Fragment::Text(r) => {
                            pre.split(&text[r.clone()], &mut words);
                            for w in &words {
                                bpe.encode_word(v, w, &mut scratch, &mut out);
                            }
                        }
                    }
                }
            }
            Algo::Spm => {
                let mut scratch = spm::Scratch::default();
                let mut buf = String::new();
                let mut prev_special = true;
                for f in frags {
                    match f {
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if v.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            spm::escape_whitespace(&text[r.clone()], &mut buf);
                            spm::encode(v, &buf, &mut scratch, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && v.add_eos {
            if let Some(e) = v.eos {
                out.push(e);
            }
        }
        out
    }
}

/// `<0x0A>` → 0x0A.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
