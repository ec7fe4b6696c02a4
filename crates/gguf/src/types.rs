//! The tensor element types a GGUF file can name (ggml's `ggml_type`), with their block
//! geometry. Only the layout lives here; the arithmetic of each format is in `surplus-quant`.

use std::fmt;

/// A ggml tensor type, identified in the file by its `u32` id.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float, 4 bytes.
    F32 = 0,
    /// 16-bit IEEE half float, 2 bytes.
    F16 = 1,
    /// Blocks of 32 4-bit weights with one f16 scale (18 bytes, 4.5 bits per weight).
    Q4_0 = 2,
    /// Blocks of 32 4-bit weights with an f16 scale and an f16 minimum (20 bytes).
    Q4_1 = 3,
    /// Blocks of 32 5-bit weights (low nibbles and a 32-bit mask of high bits) with one f16
    /// scale (22 bytes).
    Q5_0 = 6,
    /// Blocks of 32 5-bit weights with an f16 scale and an f16 minimum (24 bytes).
    Q5_1 = 7,
    /// Blocks of 32 8-bit weights with one f16 scale (34 bytes).
    Q8_0 = 8,
    /// Blocks of 32 8-bit values with an f16 scale and an f16 scaled sum (36 bytes): the
    /// activation format for dot products with the formats that have a minimum.
    Q8_1 = 9,
    /// 256-weight super-blocks of 2-bit weights, 4-bit scales and minimums per 16 weights,
    /// f16 super-scales (84 bytes, 2.625 bits per weight).
    Q2_K = 10,
    /// 256-weight super-blocks of 3-bit weights (2 low bits and a high-bit mask), 6-bit
    /// scales per 16 weights, one f16 super-scale (110 bytes, 3.4375 bits per weight).
    Q3_K = 11,
    /// 256-weight super-blocks of 4-bit weights, 6-bit scales and minimums per 32 weights,
    /// f16 super-scales (144 bytes, 4.5 bits per weight).
    Q4_K = 12,
    /// 256-weight super-blocks of 5-bit weights, 6-bit scales and minimums per 32 weights,
    /// f16 super-scales (176 bytes, 5.5 bits per weight).
    Q5_K = 13,
    /// 256-weight super-blocks of 6-bit weights, 8-bit scales per 16 weights, one f16
    /// super-scale (210 bytes, 6.5625 bits per weight).
    Q6_K = 14,
    /// 256 8-bit values with an f32 scale and sums per 16 values (292 bytes); ggml quantizes
    /// activations to it for dot products with the k-quants.
    Q8_K = 15,
    /// 256-weight super-blocks of 8-weight groups indexed into a lattice codebook, with
    /// signs and scales packed alongside (66 bytes, 2.0625 bits per weight).
    IQ2_XXS = 16,
    /// Like `IQ2_XXS` with a larger codebook and 4-bit sub-block scales (74 bytes, 2.3125
    /// bits per weight).
    IQ2_XS = 17,
    /// 256-weight super-blocks of 4-weight groups indexed into a 3-bit codebook (98 bytes,
    /// 3.0625 bits per weight).
    IQ3_XXS = 18,
    /// 256-weight super-blocks of 1.5-bit codebook-indexed weights (50 bytes, 1.5625 bits per
    /// weight).
    IQ1_S = 19,
    /// Blocks of 32 4-bit indices into a fixed non-linear table of 16 values, one f16 scale
    /// (18 bytes).
    IQ4_NL = 20,
    /// 256-weight super-blocks of 3-bit codebook-indexed weights with explicit signs and
    /// 4-bit scales (110 bytes, 3.4375 bits per weight).
    IQ3_S = 21,
    /// 256-weight super-blocks of 2-bit codebook-indexed weights with explicit signs and
    /// 4-bit scales (82 bytes, 2.5625 bits per weight).
    IQ2_S = 22,
    /// 256-weight super-blocks of 4-bit indices into the `IQ4_NL` table, 6-bit scales per 32
    /// weights, one f16 super-scale (136 bytes, 4.25 bits per weight).
    IQ4_XS = 23,
    /// Signed 8-bit integer, 1 byte.
    I8 = 24,
    /// Signed 16-bit integer, 2 bytes.
    I16 = 25,
    /// Signed 32-bit integer, 4 bytes.
    I32 = 26,
    /// Signed 64-bit integer, 8 bytes.
    I64 = 27,
    /// 64-bit IEEE float, 8 bytes.
    F64 = 28,
    /// 256-weight super-blocks of 1.75-bit codebook-indexed weights, scales packed in the
    /// block (56 bytes, 1.75 bits per weight).
    IQ1_M = 29,
    /// bfloat16: the top 16 bits of an f32, 2 bytes.
    BF16 = 30,
    /// Ternary weights (-1, 0, 1) packed in base 3 (mostly five per byte), 256 per block
    /// with one f16 scale (54 bytes, 1.6875 bits per weight).
    TQ1_0 = 34,
    /// Ternary weights (-1, 0, 1) at 2 bits each, 256 per block with one f16 scale (66 bytes).
    TQ2_0 = 35,
    /// Blocks of 32 4-bit E2M1 floats with one shared E8M0 power-of-two scale (17 bytes).
    MXFP4 = 39,
    /// Blocks of 64 4-bit E2M1 floats with an 8-bit (E4M3) scale per 16 of them (36 bytes).
    NVFP4 = 40,
    /// Blocks of 128 1-bit weights (a sign each) with one f16 scale (18 bytes).
    Q1_0 = 41,
}

/// Every type this crate knows, in id order.
pub const ALL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::IQ1_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::F64,
    GgmlType::IQ1_M,
    GgmlType::BF16,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
    GgmlType::Q1_0,
];

impl GgmlType {
    /// The type with this id, or `None` for an id this build does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        ALL_TYPES.iter().copied().find(|t| *t as u32 == id)
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block (1 for plain scalar types).
    pub fn block_size(self) -> u64 {
        self.layout().0
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.layout().1
    }

    /// Whether the type is a block-quantized format (not a plain scalar type).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (bs, ts) = self.layout();
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(ts)
    }

    /// The name ggml and llama.cpp print (`Q4_K`, `F16`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
        }
    }

    /// Parses a name as printed by [`GgmlType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// (elements per block, bytes per block), as ggml defines them.
    fn layout(self) -> (u64, u64) {
        use GgmlType::*;
        const QK_K: u64 = 256;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            BF16 => (1, 2),
            F64 => (1, 8),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            Q4_0 => (32, 2 + 16),
            Q4_1 => (32, 2 + 2 + 16),
            Q5_0 => (32, 2 + 4 + 16),
            Q5_1 => (32, 2 + 2 + 4 + 16),
            Q8_0 => (32, 2 + 32),
            Q8_1 => (32, 2 + 2 + 32),
            Q2_K => (QK_K, 16 + 64 + 2 + 2),
            Q3_K => (QK_K, 32 + 64 + 12 + 2),
            Q4_K => (QK_K, 2 + 2 + 12 + 128),
            Q5_K => (QK_K, 2 + 2 + 12 + 32 + 128),
            Q6_K => (QK_K, 128 + 64 + 16 + 2),
            Q8_K => (QK_K, 4 + 256 + 32),
            IQ2_XXS => (QK_K, 2 + 64),
            IQ2_XS => (QK_K, 2 + 64 + 8),
            IQ3_XXS => (QK_K, 2 + 96),
            IQ1_S => (QK_K, 2 + 32 + 16),
            IQ4_NL => (32, 2 + 16),
            IQ3_S => (QK_K, 2 + 64 + 8 + 32 + 4),
            IQ2_S => (QK_K, 2 + 64 + 8 + 8),
            IQ4_XS => (QK_K, 2 + 2 + 4 + 128),
            IQ1_M => (QK_K, 32 + 16 + 8),
            TQ1_0 => (QK_K, 48 + 4 + 2),
            TQ2_0 => (QK_K, 64 + 2),
            MXFP4 => (32, 1 + 16),
            NVFP4 => (64, 4 + 32),
            Q1_0 => (128, 2 + 16),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(GgmlType::Q4_K.type_size(), 144);
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
        assert_eq!(GgmlType::Q8_K.type_size(), 292);
        assert_eq!(GgmlType::IQ4_XS.type_size(), 136);
        assert_eq!(GgmlType::Q8_1.type_size(), 36);
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
    }
}
