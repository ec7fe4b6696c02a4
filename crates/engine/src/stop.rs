//! Streamed text and stop strings: token ids become text as it can be shown, and text that
//! could still be the start of a stop string is held back until it is known not to be.

use tokenizer::{StreamDecoder, Tokenizer};

/// Finds stop strings in streamed text and says how much of it is safe to emit: text that
/// could still become the start of a stop string is held back.
#[derive(Clone, Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    /// All text generated so far.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl StopScanner {
    /// A scanner for these stop strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> StopScanner {
        StopScanner {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds a piece of text. Returns `(safe, stopped)`: the text that may be emitted now,
    /// and whether a stop string was found (the text is then cut before it).
    pub fn push(&mut self, piece: &str) -> (&str, bool) {
        let from = self.text.len();
        self.text.push_str(piece);
        // Only look where a match could end in the new text.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut scan = from.saturating_sub(longest);
        while !self.text.is_char_boundary(scan) {
            scan -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[scan..].find(s.as_str()).map(|i| scan + i))
            .min();
        if let Some(at) = hit {
            let at = at.max(self.emitted);
            self.text.truncate(at);
            let start = self.emitted;
            self.emitted = at;
            return (&self.text[start..at], true);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = self.text.len();
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    keep = keep.min(self.text.len() - i);
                }
            }
        }
        let keep = keep.max(self.emitted);
        let start = self.emitted;
        self.emitted = keep;
        (&self.text[start..keep], false)
    }

    /// Releases what was held back (at the end of generation).
    pub fn finish(&mut self) -> &str {
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }

    /// All text so far (cut before a stop string once one was found).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A sequence's generated text as it streams out: each token's piece (whole characters, see
/// [`StreamDecoder`]) goes through a [`StopScanner`]. Plain and speculative generation and
/// the server all emit text through it.
pub struct TextStream {
    decoder: StreamDecoder,
    stop: StopScanner,
    piece: String,
}

impl TextStream {
    /// A stream stopping at these strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> TextStream {
        TextStream {
            decoder: StreamDecoder::new(false),
            stop: StopScanner::new(stops),
            piece: String::with_capacity(64),
        }
    }

    /// Adds token `id`. Returns `(safe, stopped)` as [`StopScanner::push`] does.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> (&str, bool) {
        self.piece.clear();
        self.decoder.push(tok, id, &mut self.piece);
        self.stop.push(&self.piece)
    }

    /// Ends the stream (not after a stop): flushes what the decoder holds (bytes of an
    /// unfinished character) and releases the held-back text. Returns that text and whether
    /// a stop string appeared in the flushed bytes (the text is then cut before it).
    pub fn finish(&mut self) -> (&str, bool) {
        self.piece.clear();
        self.decoder.finish(&mut self.piece);
        let start = self.stop.emitted;
        let (_, hit) = self.stop.push(&self.piece);
        if !hit {
            self.stop.finish();
        }
        (&self.stop.text[start..self.stop.emitted], hit)
    }

    /// All text so far (cut before a stop string once one was found).
    pub fn text(&self) -> &str {
        self.stop.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut s = StopScanner::new(vec!["END".into()]);
        assert_eq!(s.push("hello E"), ("hello ", false));
        assert_eq!(s.push("N"), ("", false));
        assert_eq!(s.push("D and more"), ("", true));
        assert_eq!(s.text(), "hello ");
        let mut s = StopScanner::new(vec!["END".into()]);
        assert_eq!(s.push("hello E"), ("hello ", false));
        assert_eq!(s.push("x"), ("Ex", false));
        assert_eq!(s.finish(), "");
        let mut s = StopScanner::new(vec!["\n\n".into(), "é!".into()]);
        assert_eq!(s.push("aé"), ("a", false));
        assert_eq!(s.push("b\n"), ("éb", false));
        assert_eq!(s.finish(), "\n");
        let mut s = StopScanner::new(vec![]);
        assert_eq!(s.push("abc"), ("abc", false));
    }
}
