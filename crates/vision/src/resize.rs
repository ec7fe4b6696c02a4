//! Pillow's resampling, in integers: separable (x, then y), each output a normalised
//! weighted sum of input pixels in fixed point (22 fraction bits), rounded and clamped to 8 bits.

use crate::decode::RgbImage;

/// The resampling kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Triangle, 1 − |x| ("bilinear"), support 1.
    Bilinear,
    /// Keys cubic with a = −0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 22;

/// For each output index, the first input index and the fixed-point weights.
struct Coeffs {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(n_in: usize, n_out: usize, filter: Filter) -> Coeffs {
    let scale = n_in as f64 / n_out as f64;
    let fscale = scale.max(1.0);
    let support = filter.support() * fscale;
    let mut first = Vec::with_capacity(n_out);
    let mut weights = Vec::with_capacity(n_out);
    let mut k = Vec::new();
    for i in 0..n_out {
        let centre = (i as f64 + 0.5) * scale;
        let lo = ((centre - support + 0.5) as i64).max(0) as usize;
        let hi = ((centre + support + 0.5) as i64).clamp(0, n_in as i64) as usize;
        k.clear();
        k.extend((lo..hi).map(|j| filter.eval((j as f64 - centre + 0.5) / fscale)));
        let sum: f64 = k.iter().sum();
        let w = k
            .iter()
            .map(|&v| {
                let v = if sum != 0.0 { v / sum } else { v };
                let f = v * (1u32 << PRECISION_BITS) as f64;
                (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
            })
            .collect();
        first.push(lo);
        weights.push(w);
    }
    Coeffs { first, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img` resampled to `w` × `h` (unchanged when the size is the same).
pub fn resize(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    let mut cur = img.clone();
    if w != cur.width {
        let c = coeffs(cur.width as usize, w as usize, filter);
        let mut out = vec![0u8; w as usize * cur.height as usize * 3];
        for y in 0..cur.height as usize {
            let row = &cur.pixels[y * cur.width as usize * 3..][..cur.width as usize * 3];
            for x in 0..w as usize {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &wt) in c.weights[x].iter().enumerate() {
                        acc += wt as i64 * row[(c.first[x] + j) * 3 + ch] as i64;
                    }
                    out[(y * w as usize + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        cur = RgbImage {
            width: w,
            height: cur.height,
            pixels: out,
        };
    }
    if h != cur.height {
        let c = coeffs(cur.height as usize, h as usize, filter);
        let stride = cur.width as usize * 3;
        let mut out = vec![0u8; stride * h as usize];
        for y in 0..h as usize {
            for i in 0..stride {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &wt) in c.weights[y].iter().enumerate() {
                    acc += wt as i64 * cur.pixels[(c.first[y] + j) * stride + i] as i64;
                }
                out[y * stride + i] = clip8(acc);
            }
        }
        cur = RgbImage {
            width: cur.width,
            height: h,
            pixels: out,
        };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (a, b) in [(64, 128), (300, 224), (150, 144), (7, 3)] {
            for f in [Filter::Bilinear, Filter::Bicubic] {
                let c = coeffs(a, b, f);
                for w in &c.weights {
                    let s: i64 = w.iter().map(|&v| v as i64).sum();
                    assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i64);
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage::new(5, 4, [10u8, 20, 30].repeat(20)).unwrap();
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let r = resize(&img, 13, 7, f);
            assert!(r.pixels.chunks(3).all(|p| p == [10, 20, 30]));
        }
    }
}
