//! Bit-exactness of the dequantizers against an independent implementation: random raw
//! blocks dequantized by gguf-py 0.19.0 (numpy), whose f32 operations follow ggml's
//! reference C code in the same order, or, for Q8_1 and Q8_K which gguf-py cannot
//! dequantize, by numpy from the format definition. No type needs any tolerance: every
//! value must match bit for bit. Regenerate with `scripts/make_quant_fixtures.py`.

mod common;

use common::{first_bit_mismatch, fixture, hex_bytes, hex_words, str_field};
use gguf::GgmlType;
use quant::{dequantize, dequantize_to_vec, quantize_to_vec, supported_types};

#[test]
fn random_blocks_dequantize_bit_exactly() {
    let doc = fixture("blocks.json");
    let entries = doc["types"].as_array().expect("types");
    let mut seen = Vec::new();
    for e in entries {
        let ty = GgmlType::from_name(str_field(e, "type")).expect("known type");
        let raw = hex_bytes(str_field(e, "blocks"));
        let want = hex_words(str_field(e, "expected_f32_bits"), 8);
        let got = dequantize_to_vec(ty, &raw).unwrap();
        if let Some((i, g, w)) = first_bit_mismatch(&got, &want) {
            panic!(
                "{ty} ({}): element {i}: got {g:e}, want {w:e}",
                str_field(e, "source")
            );
        }
        // The same bytes at an odd address take the unaligned path.
        let mut shifted = vec![0u8; raw.len() + 1];
        shifted[1..].copy_from_slice(&raw);
        let mut got2 = vec![0.0f32; want.len()];
        dequantize(ty, &shifted[1..], &mut got2).unwrap();
        assert!(
            first_bit_mismatch(&got2, &want).is_none(),
            "{ty}: unaligned input"
        );
        seen.push(ty);
    }
    for ty in supported_types() {
        assert!(seen.contains(ty), "no fixture for {ty}");
    }
}

#[test]
fn f32_to_f16_and_bf16_match_reference() {
    let doc = fixture("blocks.json");
    let c = &doc["conversions"];
    let input: Vec<f32> = hex_words(str_field(c, "input_f32_bits"), 8)
        .into_iter()
        .map(f32::from_bits)
        .collect();
    let f16_want = hex_words(str_field(c, "f16_bits"), 4);
    let bf16_want = hex_words(str_field(c, "bf16_bits"), 4);

    let f16 = quantize_to_vec(GgmlType::F16, &input).unwrap();
    for (i, (c, &w)) in f16.chunks_exact(2).zip(&f16_want).enumerate() {
        let got = u16::from_le_bytes([c[0], c[1]]);
        if input[i].is_nan() {
            // Libraries keep different NaN payloads; a NaN must stay a NaN.
            assert!(half::f16::from_bits(got).is_nan(), "F16 of NaN input {i}");
        } else {
            assert_eq!(u32::from(got), w, "F16 of {:e} (input {i})", input[i]);
        }
    }
    let bf16 = quantize_to_vec(GgmlType::BF16, &input).unwrap();
    for (i, (c, &w)) in bf16.chunks_exact(2).zip(&bf16_want).enumerate() {
        let got = u16::from_le_bytes([c[0], c[1]]);
        assert_eq!(u32::from(got), w, "BF16 of {:e} (input {i})", input[i]);
    }
}
