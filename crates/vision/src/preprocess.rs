//! From decoded pixels to the tower's input: the target size of each projector (Qwen's
//! "smart resize", Gemma's fixed square), fit and letterbox, Pillow resampling, mean/std.

use crate::decode::RgbImage;
use crate::resize::{resize, Filter};
use crate::VisionError;

/// An image ready for a tower: `width` × `height` normalised values per channel, planar
/// (channel, row, column), and where the image content sits on the (black-padded) canvas.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// Canvas width.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// (x, y, w, h) of the resampled image on the canvas.
    pub content: [u32; 4],
    /// `3 × height × width` values.
    pub values: Vec<f32>,
}

impl Preprocessed {
    /// Value of channel `c` at (x, y).
    pub fn at(&self, c: usize, x: usize, y: usize) -> f32 {
        let (w, h) = (self.width as usize, self.height as usize);
        self.values[(c * h + y) * w + x]
    }
}

/// Qwen-VL's "smart resize": a size that is a multiple of `align` on both sides, close to the
/// image's aspect ratio, with `min_pixels..=max_pixels` pixels. All in f32, as llama.cpp does.
pub fn smart_resize(w: u32, h: u32, align: u32, min_pixels: u64, max_pixels: u64) -> (u32, u32) {
    let a = align as f32;
    let (wf, hf) = (w as f32, h as f32);
    let round_to = |v: f32| ((v / a).round() * a).max(a);
    let (mut tw, mut th) = (round_to(wf), round_to(hf));
    if (tw as f64) * (th as f64) > max_pixels as f64 {
        let beta = (hf * wf / max_pixels as f32).sqrt();
        th = ((hf / beta / a).floor() * a).max(a);
        tw = ((wf / beta / a).floor() * a).max(a);
    } else if (tw as f64) * (th as f64) < min_pixels as f64 {
        let beta = (min_pixels as f32 / (hf * wf)).sqrt();
        th = (hf * beta / a).ceil() * a;
        tw = (wf * beta / a).ceil() * a;
    }
    (tw as u32, th as u32)
}

/// The image resampled to fit `tw` × `th` with its aspect ratio kept, centred on a black
/// canvas of that size; returns the canvas and the content box.
pub fn fit_and_pad(img: &RgbImage, tw: u32, th: u32, filter: Filter) -> (RgbImage, [u32; 4]) {
    if img.width == tw && img.height == th {
        return (img.clone(), [0, 0, tw, th]);
    }
    let s = (tw as f32 / img.width as f32).min(th as f32 / img.height as f32);
    let cw = ((img.width as f32 * s).ceil() as u32).clamp(1, tw);
    let ch = ((img.height as f32 * s).ceil() as u32).clamp(1, th);
    let content = resize(img, cw, ch, filter);
    let (x0, y0) = ((tw - cw) / 2, (th - ch) / 2);
    let mut canvas = vec![0u8; tw as usize * th as usize * 3];
    let row = cw as usize * 3;
    for y in 0..ch as usize {
        let dst = ((y0 as usize + y) * tw as usize + x0 as usize) * 3;
        canvas[dst..dst + row].copy_from_slice(&content.pixels[y * row..(y + 1) * row]);
    }
    let canvas = RgbImage {
        width: tw,
        height: th,
        pixels: canvas,
    };
    (canvas, [x0, y0, cw, ch])
}

/// `byte / 255`, then `(v − mean[c]) / std[c]`, in f32, into planar layout.
pub fn normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width as usize * img.height as usize;
    let mut out = vec![0.0f32; 3 * n];
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let v = px[c] as f32 / 255.0;
            out[c * n + i] = (v - mean[c]) / std[c];
        }
    }
    out
}

/// Fit, pad and normalise `img` for a `tw` × `th` input.
pub fn prepare(
    img: &RgbImage,
    tw: u32,
    th: u32,
    filter: Filter,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Preprocessed, VisionError> {
    if img.width == 0 || img.height == 0 {
        return Err(VisionError::Image("the image has zero size".into()));
    }
    let (canvas, content) = fit_and_pad(img, tw, th, filter);
    Ok(Preprocessed {
        width: tw,
        height: th,
        content,
        values: normalize(&canvas, mean, std),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_readme() {
        let (min, max) = (8 * 32 * 32, 4096 * 32 * 32);
        assert_eq!(smart_resize(64, 48, 32, min, max), (128, 96));
        assert_eq!(smart_resize(300, 200, 32, min, max), (288, 192));
        assert_eq!(smart_resize(150, 100, 32, min, max), (160, 96));
        let (w, h) = smart_resize(20000, 100, 32, min, max);
        assert!(w as u64 * h as u64 <= max && h >= 32);
    }

    #[test]
    fn letterbox_boxes() {
        let img = |w, h| RgbImage::new(w, h, vec![128; (w * h * 3) as usize]).unwrap();
        assert_eq!(
            fit_and_pad(&img(150, 100), 160, 96, Filter::Bicubic).1,
            [8, 0, 144, 96]
        );
        assert_eq!(
            fit_and_pad(&img(64, 48), 224, 224, Filter::Bilinear).1,
            [0, 28, 224, 168]
        );
        assert_eq!(
            fit_and_pad(&img(300, 200), 224, 224, Filter::Bilinear).1,
            [0, 37, 224, 150]
        );
    }
}
