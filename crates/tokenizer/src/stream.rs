//! Streaming detokenization that never emits broken UTF-8: bytes of a character split across
//! tokens are held back until the character is complete.

use crate::Tokenizer;

/// Turns ids into text one at a time.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder; with `special`, control tokens print their text.
    pub fn new(special: bool) -> Self {
        StreamDecoder {
            pending: Vec::with_capacity(16),
            special,
        }
    }

    /// Appends to `out` the text that `id` completes. Bytes that cannot start or continue a
    /// valid character become U+FFFD; an incomplete character at the end is held.
    pub fn push(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        self.pending.extend_from_slice(tok.piece(id, self.special));
        self.drain(out, false);
    }

    /// Appends whatever is still held (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self, out: &mut String) {
        self.drain(out, true);
    }

    fn drain(&mut self, out: &mut String, flush: bool) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = start + e.valid_up_to();
                    // SAFETY-free: from_utf8 said these bytes are valid.
                    out.push_str(std::str::from_utf8(&self.pending[start..good]).unwrap_or(""));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = good + bad;
                        }
                        None => {
                            if flush {
                                out.push('\u{FFFD}');
                                start = self.pending.len();
                            } else {
                                start = good;
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }
}
