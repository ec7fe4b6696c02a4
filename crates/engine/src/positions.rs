//! Rotary positions of sequences that hold images under multi-section RoPE (Qwen3.5): an
//! image's rows take 2-D positions, and the text after it resumes at a smaller position.
//!
//! A cache slot `p` normally turns by `(p, p, p)`. An image of `nx × ny` rows placed at slots
//! `start..start + n` gives its row i the position `(t0, t0 + i / nx, t0 + i % nx)`, where
//! `t0` is the position slot `start` would have had; the slots after it turn by
//! `t0 + max(nx, ny)` onwards. Slots stay the cache index and the causal order.

use runtime::Batch;

/// One image in a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    /// Slot of its first row.
    start: u32,
    /// Rows (`nx × ny`).
    n: u32,
    /// Rows per grid row.
    nx: u32,
    /// Temporal position of every row.
    t0: u32,
    /// Position of the slot right after the image.
    after: u32,
}

impl Span {
    fn end(&self) -> u32 {
        self.start + self.n
    }
}

/// The images of each sequence and the rotary positions they imply.
#[derive(Debug, Default)]
pub(crate) struct RopePositions {
    seqs: Vec<Vec<Span>>,
    /// Whether any sequence holds an image (else every batch takes the plain positions).
    any: bool,
}

impl RopePositions {
    /// No images in `n_seq` sequences.
    pub(crate) fn new(n_seq: usize) -> RopePositions {
        RopePositions {
            seqs: vec![Vec::new(); n_seq],
            any: false,
        }
    }

    /// The rotary position of slot `p` of sequence `seq`.
    pub(crate) fn at(&self, seq: u32, p: u32) -> [u32; 3] {
        let Some(spans) = self.seqs.get(seq as usize) else {
            return [p; 3];
        };
        match spans.iter().rev().find(|s| s.start <= p) {
            None => [p; 3],
            Some(s) if p < s.end() => {
                let i = p - s.start;
                [s.t0, s.t0 + i / s.nx, s.t0 + i % s.nx]
            }
            Some(s) => [s.after + (p - s.end()); 3],
        }
    }

    /// Forgets the images of `seq` that do not lie wholly before slot `from` (those slots
    /// are being written anew).
    pub(crate) fn truncate(&mut self, seq: u32, from: u32) {
        if let Some(spans) = self.seqs.get_mut(seq as usize) {
            spans.retain(|s| s.end() <= from);
        }
        self.any = self.seqs.iter().any(|s| !s.is_empty());
    }

    /// Places an image of `nx × ny` rows at slots `start..` of `seq` (forgetting anything
    /// from `start` on).
    pub(crate) fn add_image(&mut self, seq: u32, start: u32, nx: u32, ny: u32) {
        if seq as usize >= self.seqs.len() || nx == 0 || ny == 0 {
            return;
        }
        self.truncate(seq, start);
        let t0 = self.at(seq, start)[0];
        self.seqs[seq as usize].push(Span {
            start,
            n: nx * ny,
            nx,
            t0,
            after: t0 + nx.max(ny),
        });
        self.any = true;
    }

    /// Fills `batch.rope_pos` for its tokens, or leaves it empty when none is in a sequence
    /// holding an image. With `writes`, the batch's tokens overwrite their slots first (a
    /// trunk pass over text): images from each token's slot on are forgotten.
    pub(crate) fn fill(&mut self, batch: &mut Batch, writes: bool) {
        batch.rope_pos.clear();
        if !self.any {
            return;
        }
        if writes && batch.embd.is_empty() {
            for (&seq, &p) in batch.seq.iter().zip(&batch.pos) {
                if self.seqs.get(seq as usize).is_some_and(|s| !s.is_empty()) {
                    self.truncate(seq, p);
                }
            }
            if !self.any {
                return;
            }
        }
        let this = &*self;
        batch.rope_pos.extend(
            batch
                .seq
                .iter()
                .zip(&batch.pos)
                .map(|(&seq, &p)| this.at(seq, p)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example: 4 tokens, then the 300×200 image (9 × 6 rows), then text.
    #[test]
    fn image_rows_and_the_text_after() {
        let mut r = RopePositions::new(2);
        r.add_image(0, 4, 9, 6);
        assert_eq!(r.at(0, 3), [3, 3, 3]);
        assert_eq!(r.at(0, 4), [4, 4, 4]);
        assert_eq!(r.at(0, 4 + 8), [4, 4, 12]);
        assert_eq!(r.at(0, 4 + 9), [4, 5, 4]);
        assert_eq!(r.at(0, 4 + 53), [4, 9, 12]);
        // `<|vision_end|>` at slot 58 turns by 4 + max(9, 6) = 13.
        assert_eq!(r.at(0, 58), [13, 13, 13]);
        assert_eq!(r.at(0, 60), [15, 15, 15]);
        // Another sequence is untouched.
        assert_eq!(r.at(1, 60), [60, 60, 60]);
        // A second image continues from the shifted positions.
        r.add_image(0, 60, 2, 2);
        assert_eq!(r.at(0, 63), [15, 16, 16]);
        assert_eq!(r.at(0, 64), [17, 17, 17]);
    }

    #[test]
    fn writing_a_slot_forgets_images_from_it() {
        let mut r = RopePositions::new(1);
        r.add_image(0, 2, 4, 3);
        let mut b = Batch::one_sequence(&[1, 2], 14, 0, false);
        r.fill(&mut b, true);
        assert_eq!(b.rope_pos, vec![[6, 6, 6], [7, 7, 7]]);
        // A new prompt from slot 0 (or a rollback into the image) drops it.
        let mut b = Batch::one_sequence(&[1, 2], 0, 0, false);
        r.fill(&mut b, true);
        assert!(b.rope_pos.is_empty());
        assert_eq!(r.at(0, 14), [14, 14, 14]);
    }
}
