//! SentencePiece as llama.cpp runs it for `tokenizer.ggml.model = llama` (Llama 2, Gemma):
//! spaces become `▁`, adjacent pieces merge best score first, leftovers fall back to bytes.

use std::collections::BinaryHeap;

use crate::vocab::Vocab;

/// Buffers reused across calls.
#[derive(Default)]
pub struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Cand>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge: highest score first, then leftmost.
#[derive(PartialEq)]
struct Cand {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

/// Encodes `text` (already with spaces escaped to `▁`) and appends the ids.
pub fn encode(vocab: &Vocab, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
    let syms = &mut scratch.syms;
    syms.clear();
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        syms.push(Sym {
            start,
            len,
            prev: if i == 0 { usize::MAX } else { i - 1 },
            next: if start + len == text.len() {
                usize::MAX
            } else {
                i + 1
            },
        });
    }
    let n = syms.len();
    let heap = &mut scratch.heap;
    heap.clear();
    for i in 1..n {
        push(vocab, text, syms, heap, i - 1, i);
    }
    while let Some(c) = heap.pop() {
        let (l, r) = (syms[c.left], syms[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.size || l.next != c.right {
            continue;
        }
        syms[c.left].len += r.len;
        syms[c.right].len = 0;
        syms[c.left].next = r.next;
        if r.next != usize::MAX {
            syms[r.next].prev = c.left;
        }
        let prev = syms[c.left].prev;
        if prev != usize::MAX {
            push(vocab, text, syms, heap, prev, c.left);
        }
        if r.next != usize::MAX {
            push(vocab, text, syms, heap, c.left, r.next);
        }
    }
    let mut i = if n == 0 { usize::MAX } else { 0 };
    while i != usize::MAX {
        let s = syms[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = byte_token(vocab, b) {
                        out.push(id);
                    } else if let Some(unk) = vocab.unk {
                        out.push(unk);
                    }
                }
            }
        }
        i = s.next;
    }
}

fn push(
    vocab: &Vocab,
    text: &str,
    syms: &[Sym],
    heap: &mut BinaryHeap<Cand>,
    left: usize,
    right: usize,
) {
    let (l, r) = (syms[left], syms[right]);
    let size = l.len + r.len;
    if let Some(id) = vocab.id(&text[l.start..l.start + size]) {
        heap.push(Cand {
            score: vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}

/// The `<0xNN>` token of a byte, or the byte itself as a one-character token.
pub fn byte_token(vocab: &Vocab, b: u8) -> Option<u32> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let name = [
        b'<',
        b'0',
        b'x',
        HEX[(b >> 4) as usize],
        HEX[(b & 15) as usize],
        b'>',
    ];
    // The name is ASCII, so this cannot fail.
    let name = std::str::from_utf8(&name).unwrap_or_default();
    vocab.id(name).or_else(|| {
        if b < 0x80 {
            vocab.id(std::str::from_utf8(&[b]).unwrap_or_default())
        } else {
            None
        }
    })
}

/// Spaces to `▁`, as SentencePiece escapes them.
pub fn escape_whitespace(text: &str, out: &mut String) {
    for c in text.chars() {
        if c == ' ' {
            out.push('\u{2581}');
        } else {
            out.push(c);
        }
    }
}
