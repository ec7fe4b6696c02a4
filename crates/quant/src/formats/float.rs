//! The plain float types: F32 (copied), F16 (IEEE half, via the `half` crate) and BF16
//! (the top 16 bits of an f32, rounded to nearest even as ggml does).

/// F32 bytes (little-endian) to `f32`; bit patterns are kept, NaN payloads included.
pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    match bytemuck::try_cast_slice::<u8, f32>(src) {
        Ok(v) => dst.copy_from_slice(v),
        Err(_) => {
            for (c, y) in src.chunks_exact(4).zip(dst) {
                *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// `f32` to F32 bytes (little-endian), bit patterns kept.
pub(crate) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(4)) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// F16 bytes to `f32` (exact for every finite value).
pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (c, y) in src.chunks_exact(2).zip(dst) {
        *y = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// `f32` to F16 bytes, rounding to nearest even (overflow gives infinity).
pub(crate) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
    }
}

/// BF16 bytes to `f32`: the 16 bits become the high half of the f32.
pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (c, y) in src.chunks_exact(2).zip(dst) {
        *y = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// `f32` to BF16 bytes, see [`f32_to_bf16`].
pub(crate) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

/// A BF16 bit pattern as `f32` (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `f32` to a BF16 bit pattern as ggml converts it: round to nearest, ties to even (so a
/// value near `f32::MAX` can round to infinity); a NaN keeps its sign and top payload
/// bits and is made quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        // NaN: truncating could clear every payload bit left and give infinity, so set
        // the quiet bit.
        return ((bits >> 16) | 0x0040) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1.0 + half an ulp of bf16: a tie, rounds down to the even 1.0.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        // The next tie rounds up to the even 0x3F82.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        // A signalling NaN whose payload lives in the low bits stays a NaN.
        let nan = f32_to_bf16(f32::from_bits(0x7F80_0001));
        assert!(bf16_to_f32(nan).is_nan());
        assert_eq!(nan, 0x7FC0);
    }

    #[test]
    fn bf16_round_trips() {
        for bits in [0u16, 0x8000, 0x3F80, 0x0001, 0x7F7F, 0xFF80, 0x4049] {
            assert_eq!(f32_to_bf16(bf16_to_f32(bits)), bits);
        }
    }
}
