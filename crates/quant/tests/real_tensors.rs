//! Tensors of the three test models, opened with the project's own GGUF reader and
//! dequantized here, against gguf-py 0.19.0's dequantization of the same tensors: the
//! first values bit for bit and the sha256 of the whole tensor (little-endian f32).
//! Together the tensors cover every type the models use (Q4_1, Q8_0, F32; Q4_K, Q5_0,
//! Q6_K). Regenerate the fixture with `scripts/make_quant_fixtures.py`.

mod common;

use common::{first_bit_mismatch, fixture, hex_words, str_field};
use gguf::GgmlType;
use sha2::{Digest, Sha256};

fn sha256_hex(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn model_tensors_match_gguf_py() {
    let doc = fixture("real_tensors.json");
    for m in doc["models"].as_array().expect("models") {
        let model = str_field(m, "model");
        let path = registry::test_model(model);
        let g = gguf::Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for t in m["tensors"].as_array().expect("tensors") {
            let name = str_field(t, "name");
            let info = g
                .tensor(name)
                .unwrap_or_else(|| panic!("{model}: no tensor {name}"));
            let ty = GgmlType::from_name(str_field(t, "type")).expect("type");
            assert_eq!(info.ggml_type(), ty, "{model} {name}");
            let shape: Vec<u64> = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            assert_eq!(info.dims(), shape.as_slice(), "{model} {name}");

            let values = quant::dequantize_to_vec(ty, g.tensor_data(info))
                .unwrap_or_else(|e| panic!("{model} {name}: {e}"));
            assert_eq!(
                values.len() as u64,
                shape.iter().product::<u64>(),
                "{model} {name}"
            );
            let head = hex_words(str_field(t, "head_f32_bits"), 8);
            if let Some((i, got, want)) = first_bit_mismatch(&values[..head.len()], &head) {
                panic!("{model} {name} ({ty}): element {i}: got {got:e}, want {want:e}");
            }
            assert_eq!(
                sha256_hex(&values),
                str_field(t, "sha256"),
                "{model} {name} ({ty})"
            );
        }
    }
}
