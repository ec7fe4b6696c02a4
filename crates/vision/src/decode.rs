//! Decoding image files (PNG, JPEG, WebP, GIF's first frame) into 8-bit RGB, with bounds on
//! the encoded size and on the pixels, so that a hostile file is an error, never a crash.

use std::io::Cursor;

use crate::VisionError;

/// Bounds on what [`decode`] accepts.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest encoded file, in bytes.
    pub max_bytes: usize,
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits {
            max_bytes: 64 << 20,
            max_side: 16_384,
            max_pixels: 50_000_000,
        }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// An image over `pixels` (width × height × 3 bytes); `None` when the sizes disagree.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Option<RgbImage> {
        let n = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (n == pixels.len()).then_some(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// The pixel at (x, y).
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

/// Decodes an image file's bytes (the format is guessed from its first bytes) into RGB; an
/// alpha channel is dropped, not blended (as llama.cpp does), and a GIF gives its first frame.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::Image("empty image data".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(VisionError::ImageTooLarge(format!(
            "{} bytes (at most {})",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::Image(e.to_string()))?;
    if reader.format().is_none() {
        return Err(VisionError::Image(
            "not a PNG, JPEG, WebP or GIF image".into(),
        ));
    }
    // Check the header's size before any pixel is decoded.
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| VisionError::Image(e.to_string()))?;
    check_size(w, h, limits)?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::Image(e.to_string()))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(1 << 26));
    reader.limits(l);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(e) => VisionError::ImageTooLarge(e.to_string()),
        e => VisionError::Image(e.to_string()),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    check_size(w, h, limits)?;
    Ok(RgbImage {
        width: w,
        height: h,
        pixels: rgb.into_raw(),
    })
}

fn check_size(w: u32, h: u32, limits: &DecodeLimits) -> Result<(), VisionError> {
    if w == 0 || h == 0 {
        return Err(VisionError::Image(format!(
            "the image has zero size ({w}×{h})"
        )));
    }
    if w > limits.max_side || h > limits.max_side || w as u64 * h as u64 > limits.max_pixels {
        return Err(VisionError::ImageTooLarge(format!(
            "{w}×{h} pixels (at most {} a side and {} in all)",
            limits.max_side, limits.max_pixels
        )));
    }
    Ok(())
}
