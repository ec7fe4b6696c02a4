//! Helpers shared by the fixture tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// Parses a JSON fixture from `tests/data/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The string field `key` of `v`.
pub fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string field {key}"))
}

/// Plain hex to bytes.
pub fn hex_bytes(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Concatenated fixed-width hex words (`digits` per word, most significant first).
pub fn hex_words(s: &str, digits: usize) -> Vec<u32> {
    assert!(
        s.len().is_multiple_of(digits),
        "hex length not a multiple of {digits}"
    );
    (0..s.len())
        .step_by(digits)
        .map(|i| u32::from_str_radix(&s[i..i + digits], 16).expect("hex"))
        .collect()
}

/// The first index where two f32 slices differ bitwise, with both values.
pub fn first_bit_mismatch(got: &[f32], want_bits: &[u32]) -> Option<(usize, f32, f32)> {
    assert_eq!(got.len(), want_bits.len(), "lengths differ");
    got.iter()
        .zip(want_bits)
        .position(|(g, &w)| g.to_bits() != w)
        .map(|i| (i, got[i], f32::from_bits(want_bits[i])))
}
