//! [`Collect`]: an [`Ops`] that runs nothing and records every weight and host vector a
//! forward pass asks for. A device that keeps weights in its own memory (CUDA) runs the
//! model's code once with it at load to learn what to upload, whatever the family: the
//! model code stays the one description of what a pass reads.

use std::cell::RefCell;
use std::collections::HashSet;

use crate::ops::{Act, Attention, Batch, DeltaNet, Ops, Rope};
use crate::tensor::Weight;

/// The identity of a host slice or weight: its address and length in bytes. Weights and
/// vectors live as long as the model (their memory never moves), so a device can find its
/// copy of one by this key.
pub type Key = (usize, usize);

/// The key of a weight's bytes.
pub fn weight_key(w: &Weight) -> Key {
    let b = w.bytes();
    (b.as_ptr() as usize, b.len())
}

/// The key of a vector of f32 values.
pub fn vector_key(v: &[f32]) -> Key {
    (v.as_ptr() as usize, std::mem::size_of_val(v))
}

/// What a pass uses, in first-use order.
#[derive(Default)]
pub struct Collected {
    /// Weight matrices (embeddings, projections, LM head), each once.
    pub weights: Vec<Weight>,
    /// Host vectors (norm weights, biases, gates' parameters, convolution taps), each once.
    pub vectors: Vec<Vec<f32>>,
    /// Keys of `vectors`, in the same order.
    pub vector_keys: Vec<Key>,
    /// Bytes of the weights the passes' matmuls read (each call counted: what one pass
    /// reads from memory for one token, the bandwidth roofline's numerator).
    pub matmul_bytes: usize,
    /// The weights the passes' matmuls take, each once (embedding lookups left out).
    pub matmuls: Vec<Weight>,
    seen: HashSet<Key>,
    seen_matmul: HashSet<Key>,
}

/// Records the weights and vectors of the passes run with it.
pub struct Collect {
    batch: Batch,
    out: RefCell<Collected>,
}

impl Collect {
    /// A collector whose passes see `batch` (a model may branch on it: give one token with
    /// its logits wanted, so that every part runs).
    pub fn new(batch: Batch) -> Collect {
        Collect {
            batch,
            out: RefCell::new(Collected::default()),
        }
    }

    /// What the passes run so far used.
    pub fn finish(self) -> Collected {
        self.out.into_inner()
    }

    fn weight(&self, w: &Weight) {
        let mut c = self.out.borrow_mut();
        if c.seen.insert(weight_key(w)) {
            c.weights.push(w.clone());
        }
    }

    fn vector(&self, v: &[f32]) {
        let mut c = self.out.borrow_mut();
        let k = vector_key(v);
        // Weights and vectors never share an address; the set is shared for simplicity.
        if c.seen.insert((k.0 | 1 << 63, k.1)) {
            c.vectors.push(v.to_vec());
            c.vector_keys.push(k);
        }
    }
}

impl Ops for Collect {
    fn batch(&self) -> &Batch {
        &self.batch
    }
    fn embed(&self, w: &Weight, _out: Act) {
        self.weight(w);
    }
    fn rms_norm(&self, _n: usize, _x: Act, w: Option<&[f32]>, _e: f32, _r: usize, _o: Act) {
        if let Some(w) = w {
            self.vector(w);
        }
    }
    fn matmul(&self, _n: usize, w: &Weight, _x: Act, _out: Act) {
        self.weight(w);
        let mut c = self.out.borrow_mut();
        c.matmul_bytes += w.bytes().len();
        if c.seen_matmul.insert(weight_key(w)) {
            c.matmuls.push(w.clone());
        }
    }
    fn add_bias(&self, _n: usize, _x: Act, b: &[f32]) {
        self.vector(b);
    }
    fn rope(&self, _x: Act, _h: usize, _d: usize, rope: &Rope) {
        self.vector(&rope.inv_freq);
    }
    fn attention(&self, _l: usize, _q: Act, _k: Act, _v: Act, _s: &Attention, _o: Act) {}
    fn swiglu(&self, _n: usize, _g: Act, _u: Act, _o: Act) {}
    fn geglu(&self, _n: usize, _g: Act, _u: Act, _o: Act) {}
    fn add(&self, _n: usize, _a: Act, _b: Act, _o: Act) {}
    fn scale(&self, _n: usize, _x: Act, _s: f32) {}
    fn gather_logit_rows(&self, _x: Act, _o: Act) {}
    fn softcap(&self, _n: usize, _x: Act, _c: f32) {}
    fn unzip(&self, _n: usize, _x: Act, _h: usize, _a: Act, _b: Act) {}
    fn sigmoid_mul(&self, _n: usize, _x: Act, _g: Act, _o: Act) {}
    fn concat(&self, _n: usize, _a: Act, _b: Act, _o: Act) {}
    fn gated_rms_norm(&self, _n: usize, _x: Act, _z: Act, w: &[f32], _e: f32, _o: Act) {
        self.vector(w);
    }
    fn delta_gates(&self, _n: usize, _a: Act, _b: Act, dt_bias: &[f32], a: &[f32]) {
        self.vector(dt_bias);
        self.vector(a);
    }
    fn conv_silu(&self, _l: usize, _x: Act, w: &[f32], _net: &DeltaNet, _o: Act) {
        self.vector(w);
    }
    fn gated_delta(&self, _l: usize, _x: Act, _g: Act, _b: Act, _n: &DeltaNet, _o: Act) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Plan, RopeMode};

    #[test]
    fn records_each_weight_and_vector_once() {
        let mut plan = Plan::new();
        let (x, y) = (plan.act(4), plan.act(4));
        let w = Weight::from_f32(4, 4, &[0.5; 16]).unwrap();
        let norm = vec![1.0f32; 4];
        let rope = Rope::new(RopeMode::Neox, 4, 10000.0, 1.0);
        let c = Collect::new(Batch::one_sequence(&[1], 0, 0, false));
        for _ in 0..2 {
            c.embed(&w, x);
            c.rms_norm(1, x, Some(&norm), 1e-5, 4, y);
            c.matmul(1, &w, y, x);
            c.rope(x, 1, 4, &rope);
        }
        let got = c.finish();
        assert_eq!(got.weights.len(), 1);
        assert_eq!(got.vectors.len(), 2);
        assert_eq!(got.vector_keys[0], vector_key(&norm));
    }
}
