//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = gpt2`): bytes mapped to printable
//! characters, words merged pair by pair in the order of `tokenizer.ggml.merges`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use gguf::{Array, Metadata};

use crate::vocab::Vocab;
use crate::TokenizerError;

/// GPT-2's reversible map from bytes to characters: printable Latin-1 bytes map to
/// themselves, the others to U+0100 and up, in byte order.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

/// The merge table, keyed by the ids of the two parts.
pub struct Bpe {
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's character (or `None` when the vocabulary lacks it).
    byte_ids: [Option<u32>; 256],
    byte_chars: [char; 256],
    /// Characters back to bytes, for decoding.
    pub(crate) char_to_byte: HashMap<char, u8>,
    /// Whole words found in the vocabulary skip merging (`llama3`-style vocabularies).
    ignore_merges: bool,
}

impl Bpe {
    /// Reads `tokenizer.ggml.merges` ("left right" strings, best first).
    pub fn from_metadata(m: &Metadata, vocab: &Vocab) -> Result<Bpe, TokenizerError> {
        let merges_arr = match m.get_array("tokenizer.ggml.merges") {
            Some(Array::String(v)) => v,
            _ => {
                return Err(TokenizerError::Metadata {
                    key: "tokenizer.ggml.merges".into(),
                    reason: "missing or not an array of strings (a gpt2 tokenizer needs merges)"
                        .into(),
                })
            }
        };
        let mut merges = HashMap::with_capacity(merges_arr.len());
        let mut joined = String::new();
        for (rank, line) in merges_arr.iter().enumerate() {
            // Split at the first space after the first character, as the reference does.
            let first_len = line.chars().next().map_or(0, char::len_utf8);
            let Some(pos) = line[first_len..].find(' ').map(|p| p + first_len) else {
                continue;
            };
            let (l, r) = (&line[..pos], &line[pos + 1..]);
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            if let (Some(a), Some(b), Some(c)) = (vocab.id(l), vocab.id(r), vocab.id(&joined)) {
                merges.entry((a, b)).or_insert((rank as u32, c));
            }
        }
        let byte_chars = byte_to_char_table();
        let mut byte_ids = [None; 256];
        let mut char_to_byte = HashMap::with_capacity(256);
        let mut buf = [0u8; 4];
        for b in 0..256 {
            let c = byte_chars[b];
            byte_ids[b] = vocab.id(c.encode_utf8(&mut buf));
            char_to_byte.insert(c, b as u8);
        }
        let ignore_merges = matches!(
            vocab.pre.as_str(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken" | "command-r"
        );
        Ok(Bpe {
            merges,
            byte_ids,
            byte_chars,
            char_to_byte,
            ignore_merges,
        })
    }

    /// Encodes one pre-tokenized word (raw UTF-8) and appends its ids.
    /// `scratch` holds the byte-encoded word between calls, to avoid allocating.
    pub fn encode_word(
        &self,
        vocab: &Vocab,
        word: &str,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        scratch.encoded.clear();
        for &b in word.as_bytes() {
            scratch.encoded.push(self.byte_chars[b as usize]);
        }
        if self.ignore_merges {
            let s: String = scratch.encoded.iter().collect();
            if let Some(id) = vocab.id(&s) {
                out.push(id);
                return;
            }
        }
        // Symbols start as one per byte; `None` marks a byte with no token.
        let syms = &mut scratch.syms;
        syms.clear();
        let n = word.len();
        for (i, &b) in word.as_bytes().iter().enumerate() {
            syms.push(Sym {
                id: self.byte_ids[b as usize],
                len: 1,
                prev: if i == 0 { usize::MAX } else { i - 1 },
                next: if i + 1 == n { usize::MAX } else { i + 1 },
            });
        }
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 1..n {
            self.push_pair(syms, heap, i - 1, i);
        }
        while let Some(Reverse((rank, left, right_len, merged))) = heap.pop() {
            let right = syms[left].next;
            // Stale entry: the pair changed since it was queued.
            if syms[left].len == 0 || right == usize::MAX || syms[right].len != right_len {
                continue;
            }
            match (syms[left].id, syms[right].id) {
                (Some(a), Some(b)) if self.merges.get(&(a, b)) == Some(&(rank, merged)) => {}
                _ => continue,
            }
            syms[left].id = Some(merged);
            syms[left].len += syms[right].len;
            syms[right].len = 0;
            let after = syms[right].next;
            syms[left].next = after;
            if after != usize::MAX {
                syms[after].prev = left;
            }
            let before = syms[left].prev;
            if before != usize::MAX {
                self.push_pair(syms, heap, before, left);
            }
            if after != usize::MAX {
                self.push_pair(syms, heap, left, after);
            }
        }
        let mut i = 0;
        while i != usize::MAX && i < n {
            if let Some(id) = syms[i].id {
                out.push(id);
            }
            i = syms[i].next;
        }
    }

    fn push_pair(&self, syms: &[Sym], heap: &mut Heap, left: usize, right: usize) {
        if let (Some(a), Some(b)) = (syms[left].id, syms[right].id) {
            if let Some(&(rank, merged)) = self.merges.get(&(a, b)) {
                heap.push(Reverse((rank, left, syms[right].len, merged)));
            }
        }
    }
}

/// One symbol of a word being merged: a token id over `len` bytes, in a linked list.
#[derive(Clone, Copy)]
pub struct Sym {
    id: Option<u32>,
    len: usize,
    prev: usize,
    next: usize,
}

/// Queue of candidate merges: lowest rank first, then leftmost.
type Heap = BinaryHeap<Reverse<(u32, usize, usize, u32)>>;

/// Buffers reused across words.
#[derive(Default)]
pub struct Scratch {
    encoded: Vec<char>,
    syms: Vec<Sym>,
    heap: Heap,
}
