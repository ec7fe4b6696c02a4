//! Q8_0: blocks of 32 weights, 8-bit signed levels times one f16 scale.

use bytemuck::{Pod, Zeroable};
use gguf::GgmlType;
use half::f16;

use super::{inverse, round_i32, signed_absmax, Block};

/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;

/// One Q8_0 block (34 bytes): `y[i] = d * qs[i]`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Levels.
    pub qs: [i8; QK8_0],
}

const _: () = assert!(size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK8_0;
}

impl BlockQ8_0 {
    /// Writes the block's 32 values to `y`.
    pub fn dequantize(&self, y: &mut [f32; QK8_0]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }

    /// Scale `max|x| / 127`, each element rounded to the nearest level.
    pub fn quantize(x: &[f32; QK8_0]) -> Self {
        let (d, qs) = quantize_symmetric8(x, true);
        BlockQ8_0 { d, qs }
    }

    /// ggml's reference quantizer (`quantize_row_q8_0_ref`): scale `d = max|x| / 127` in
    /// f32, each element times `1 / d` rounded half away from zero (what a KV cache row
    /// written by llama.cpp's reference path holds).
    pub fn quantize_ref(x: &[f32; QK8_0]) -> Self {
        let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs: x.map(|v| (v * id).round() as i8),
        }
    }
}

/// Symmetric 8-bit quantization with an f16 scale `amax / 127` (shared with Q8_1).
///
/// With `ggml_levels` (Q8_0) the levels are `x × (127 / amax)` rounded, in f32, as ggml's x86
/// quantizer computes them, so that activations quantize to ggml's levels exactly (ties
/// aside: ggml's SIMD rounds them to even): on models that amplify rounding, such as the
/// random-weight qwen35 fixture, that is what reproduces llama.cpp's numbers. Without it
/// (Q8_1), they are rounded against the stored f16 scale. Either rule is as accurate; a
/// change only redraws the rounding noise (switching Q8_1 too moved SmolLM2's Q4_1 golden
/// past its oracle's margin at one step).
pub(crate) fn quantize_symmetric8(x: &[f32; 32], ggml_levels: bool) -> (f16, [i8; 32]) {
    let (_, amax) = signed_absmax(x);
    let d = f16::from_f32(amax / 127.0);
    let id = if ggml_levels {
        if amax == 0.0 {
            0.0
        } else {
            127.0 / amax
        }
    } else {
        inverse(d.to_f32())
    };
    (d, x.map(|v| round_i32(v * id).clamp(-127, 127) as i8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_ref_follows_ggml() {
        let mut x = [0.0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i as f32 - 10.0) * 0.25;
        }
        // amax 5.25 at i = 31: d = 5.25 / 127, levels x × 127 / 5.25 rounded half away.
        let b = BlockQ8_0::quantize_ref(&x);
        assert_eq!(b.d, f16::from_f32(5.25 / 127.0));
        assert_eq!(b.qs[31], 127);
        assert_eq!(b.qs[10], 0);
        // -2.5 × 127 / 5.25 = -60.476...
        assert_eq!(b.qs[0], -60);
        assert_eq!(b.qs[11], 6); // 0.25 × 24.19 = 6.05
        let z = BlockQ8_0::quantize_ref(&[0.0; 32]);
        assert_eq!((z.d.to_f32(), z.qs), (0.0, [0; 32]));
    }
}
