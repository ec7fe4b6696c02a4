//! Reader and writer: round trips over every value type, and malformed files rejected with
//! the right typed error (never a panic).

use gguf::{parse, Array, Error, GgmlType, GgufWriter, Value};

fn every_value_writer() -> GgufWriter {
    let mut w = GgufWriter::new().alignment(64).unwrap();
    w.set_str("general.architecture", "llama");
    w.set("t.u8", Value::U8(200));
    w.set("t.i8", Value::I8(-100));
    w.set("t.u16", Value::U16(60000));
    w.set("t.i16", Value::I16(-30000));
    w.set("t.u32", Value::U32(4_000_000_000));
    w.set("t.i32", Value::I32(-2_000_000_000));
    w.set("t.f32", Value::F32(1.5e-3));
    w.set("t.bool", Value::Bool(true));
    w.set("t.string", Value::String("héllo ▁world".into()));
    w.set("t.u64", Value::U64(u64::MAX - 1));
    w.set("t.i64", Value::I64(i64::MIN + 1));
    w.set("t.f64", Value::F64(-2.25e300));
    w.set_array("a.u8", Array::U8(vec![1, 2, 3]));
    w.set_array("a.i8", Array::I8(vec![-1, 2]));
    w.set_array("a.u16", Array::U16(vec![1, 65535]));
    w.set_array("a.i16", Array::I16(vec![-5]));
    w.set_array("a.u32", Array::U32(vec![7, 8, 9]));
    w.set_array("a.i32", Array::I32(vec![-7, 8]));
    w.set_array("a.f32", Array::F32(vec![0.5, -1.0]));
    w.set_array("a.bool", Array::Bool(vec![true, false, true]));
    w.set_array(
        "a.string",
        Array::String(vec!["a".into(), "".into(), "<|im_start|>".into()]),
    );
    w.set_array("a.u64", Array::U64(vec![u64::MAX]));
    w.set_array("a.i64", Array::I64(vec![i64::MIN]));
    w.set_array("a.f64", Array::F64(vec![1e-300]));
    w.set_array("a.empty", Array::F32(vec![]));
    w.set_array(
        "a.nested",
        Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::String(vec!["x".into()]),
            Array::Array(vec![Array::U8(vec![9])]),
        ]),
    );
    let f32_data: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    w.add_f32("tok_embd.weight", &[4, 6], &f32_data).unwrap();
    w.add_tensor(
        "q.weight",
        &[64, 2],
        GgmlType::Q8_0,
        (0..136).map(|i| i as u8).collect(),
    )
    .unwrap();
    w.add_tensor("k.weight", &[256], GgmlType::Q4_K, vec![7; 144])
        .unwrap();
    w.add_tensor("n.weight", &[3, 1, 1, 2], GgmlType::F16, vec![1; 12])
        .unwrap();
    w
}

#[test]
fn round_trip_every_value_type_v3_and_v2() {
    for version in [3, 2] {
        let w = every_value_writer().version(version);
        let bytes = w.to_bytes();
        let h = parse(&bytes).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_offset % 64, 0);
        let m = &h.metadata;
        assert_eq!(m.get_str("general.architecture"), Some("llama"));
        assert_eq!(m.get("t.u8"), Some(&Value::U8(200)));
        assert_eq!(m.get("t.i8"), Some(&Value::I8(-100)));
        assert_eq!(m.get("t.u16"), Some(&Value::U16(60000)));
        assert_eq!(m.get("t.i16"), Some(&Value::I16(-30000)));
        assert_eq!(m.get("t.u32"), Some(&Value::U32(4_000_000_000)));
        assert_eq!(m.get("t.i32"), Some(&Value::I32(-2_000_000_000)));
        assert_eq!(m.get("t.f32"), Some(&Value::F32(1.5e-3)));
        assert_eq!(m.get_bool("t.bool"), Some(true));
        assert_eq!(m.get_str("t.string"), Some("héllo ▁world"));
        assert_eq!(m.get_u64("t.u64"), Some(u64::MAX - 1));
        assert_eq!(m.get("t.i64"), Some(&Value::I64(i64::MIN + 1)));
        assert_eq!(m.get("t.f64"), Some(&Value::F64(-2.25e300)));
        assert_eq!(m.get_array("a.u16"), Some(&Array::U16(vec![1, 65535])));
        assert_eq!(m.get_array("a.f64"), Some(&Array::F64(vec![1e-300])));
        assert_eq!(
            m.get_array("a.string"),
            Some(&Array::String(vec![
                "a".into(),
                "".into(),
                "<|im_start|>".into()
            ]))
        );
        assert_eq!(m.get_array("a.empty").map(|a| a.len()), Some(0));
        assert_eq!(
            m.get_array("a.nested"),
            Some(&Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::U8(vec![9])]),
            ]))
        );
        assert_eq!(m.len(), 28);
        assert_eq!(m.iter().next().unwrap().0, "general.alignment");

        let names: Vec<_> = h.tensors.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            ["tok_embd.weight", "q.weight", "k.weight", "n.weight"]
        );
        let q = &h.tensors[1];
        assert_eq!(q.dims(), &[64, 2]);
        assert_eq!(q.ggml_type(), GgmlType::Q8_0);
        assert_eq!(q.n_bytes(), 136);
        assert_eq!(q.n_elements(), 128);
        let start = (h.data_offset + q.offset()) as usize;
        let data = &bytes[start..start + 136];
        assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));
        let e = &h.tensors[0];
        let start = (h.data_offset + e.offset()) as usize;
        let v = f32::from_le_bytes(bytes[start + 4..start + 8].try_into().unwrap());
        assert_eq!(v, -2.75);
        assert_eq!(h.tensors[3].dims(), &[3, 1, 1, 2]);
        for t in &h.tensors {
            assert_eq!(t.offset() % 64, 0);
        }
    }
}

#[test]
fn open_from_disk_matches_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    every_value_writer().write_file(&path).unwrap();
    let g = gguf::Gguf::open(&path).unwrap();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.tensors().len(), 4);
    let k = g.tensor("k.weight").unwrap();
    assert_eq!(g.tensor_data(k), &[7u8; 144][..]);
    assert_eq!(g.file_size(), std::fs::metadata(&path).unwrap().len());
}

/// A small valid file whose tensor data ends the file exactly.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama");
    w.set_array(
        "tokenizer.ggml.tokens",
        Array::String(vec!["a".into(), "b".into()]),
    );
    w.add_f32("w", &[8], &[1.0; 8]).unwrap();
    w.to_bytes()
}

#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = small_file();
    parse(&bytes).unwrap();
    for len in 0..bytes.len() {
        let err = parse(&bytes[..len]).expect_err("a truncated file must be rejected");
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Truncated { .. } | Error::TooLarge { .. } | Error::TensorOutOfRange { .. }
            ),
            "len {len}: {msg}"
        );
    }
}

#[test]
fn truncated_in_header_metadata_and_data_say_where() {
    let bytes = small_file();
    let e = parse(&bytes[..10]).unwrap_err().to_string();
    assert!(e.contains("tensor count"), "{e}");
    let e = parse(&bytes[..20]).unwrap_err().to_string();
    assert!(e.contains("key-value count"), "{e}");
    let e = parse(&bytes[..40]).unwrap_err().to_string();
    assert!(
        e.contains("general.architecture") || e.contains("metadata"),
        "{e}"
    );
    let e = parse(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(
        matches!(e, Error::TensorOutOfRange { ref tensor, .. } if tensor == "w"),
        "{e}"
    );
}

#[test]
fn empty_and_bad_magic_and_version() {
    assert!(matches!(parse(&[]), Err(Error::Truncated { .. })));
    let mut b = small_file();
    b[0] = b'X';
    assert!(matches!(parse(&b), Err(Error::BadMagic { .. })));
    let mut b = small_file();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(Error::UnsupportedVersion(1))));
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse(&b), Err(Error::BigEndian)));
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut b = small_file();
    b[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { value, .. } if value == 1 << 62),
        "{e}"
    );
    let mut b = small_file();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&b), Err(Error::TooLarge { .. })));
    // The first key's length.
    let mut b = small_file();
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(parse(&b), Err(Error::TooLarge { .. })));
}

/// Builds a header by hand: magic, version 3, counts, then `rest`.
fn raw(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b.extend(rest);
    b.extend([0u8; 256]);
    b
}

fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

fn tinfo(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = (name.len() as u64).to_le_bytes().to_vec();
    b.extend(name.as_bytes());
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b
}

#[test]
fn bad_values_and_arrays() {
    let e = parse(&raw(0, 1, &kv("k", 13, &[0]))).unwrap_err();
    assert!(
        matches!(e, Error::UnknownValueType { type_id: 13, .. }),
        "{e}"
    );
    // Array of 2^61 u64: cannot fit.
    let mut arr = 10u32.to_le_bytes().to_vec();
    arr.extend((1u64 << 61).to_le_bytes());
    let e = parse(&raw(0, 1, &kv("k", 9, &arr))).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // Arrays nested past the limit.
    let mut nested = Vec::new();
    for _ in 0..20 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let e = parse(&raw(0, 1, &kv("k", 9, &nested))).unwrap_err();
    assert!(matches!(e, Error::TooDeep { .. }), "{e}");
    // Duplicate key.
    let mut two = kv("k", 0, &[1]);
    two.extend(kv("k", 0, &[2]));
    assert!(matches!(
        parse(&raw(0, 2, &two)),
        Err(Error::DuplicateKey { .. })
    ));
    // Alignment that is not a power of two.
    let e = parse(&raw(
        0,
        1,
        &kv("general.alignment", 4, &48u32.to_le_bytes()),
    ))
    .unwrap_err();
    assert!(matches!(e, Error::BadAlignment(48)), "{e}");
}

#[test]
fn bad_tensor_infos() {
    let e = parse(&raw(1, 0, &tinfo("w", &[32], 77, 0))).unwrap_err();
    assert!(
        matches!(e, Error::UnknownTensorType { type_id: 77, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"w\""));
    let e = parse(&raw(1, 0, &tinfo("w", &[1, 1, 1, 1, 1], 0, 0))).unwrap_err();
    assert!(matches!(e, Error::BadTensor { .. }), "{e}");
    let e = parse(&raw(1, 0, &tinfo("w", &[30], 2, 0))).unwrap_err();
    assert!(e.to_string().contains("block size"), "{e}");
    let e = parse(&raw(1, 0, &tinfo("w", &[1 << 40, 1 << 40], 0, 0))).unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    let e = parse(&raw(1, 0, &tinfo("w", &[4], 0, 8))).unwrap_err();
    assert!(e.to_string().contains("alignment"), "{e}");
    let e = parse(&raw(1, 0, &tinfo("w", &[1 << 20], 0, 0))).unwrap_err();
    assert!(matches!(e, Error::TensorOutOfRange { .. }), "{e}");
    let e = parse(&raw(1, 0, &tinfo("w", &[8], 0, u64::MAX - 31))).unwrap_err();
    assert!(matches!(e, Error::TensorOutOfRange { .. }), "{e}");
    let mut two = tinfo("a", &[16], 0, 0);
    two.extend(tinfo("b", &[8], 0, 32));
    let e = parse(&raw(2, 0, &two)).unwrap_err();
    assert!(matches!(e, Error::TensorOverlap { .. }), "{e}");
    let mut two = tinfo("a", &[8], 0, 0);
    two.extend(tinfo("a", &[8], 0, 32));
    assert!(matches!(
        parse(&raw(2, 0, &two)),
        Err(Error::DuplicateTensor { .. })
    ));
}

#[test]
fn random_bytes_never_panic() {
    // A small deterministic generator; the fuzz target does this at scale.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid = small_file();
    for i in 0..20_000 {
        let mut b = if i % 2 == 0 {
            valid.clone()
        } else {
            (0..(next() % 512)).map(|_| next() as u8).collect()
        };
        if i % 2 == 0 {
            for _ in 0..(1 + next() % 4) {
                let p = (next() as usize) % b.len();
                b[p] = next() as u8;
            }
        } else if b.len() >= 8 {
            b[..4].copy_from_slice(b"GGUF");
            b[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        let _ = parse(&b);
    }
}

#[test]
fn writer_refuses_bad_tensors() {
    let mut w = GgufWriter::new();
    assert!(w
        .add_tensor("x", &[32], GgmlType::Q4_0, vec![0; 17])
        .is_err());
    assert!(w
        .add_tensor("x", &[31], GgmlType::Q4_0, vec![0; 18])
        .is_err());
    assert!(w.add_tensor("x", &[], GgmlType::F32, vec![]).is_err());
    w.add_tensor("x", &[32], GgmlType::Q4_0, vec![0; 18])
        .unwrap();
    assert!(w
        .add_tensor("x", &[32], GgmlType::Q4_0, vec![0; 18])
        .is_err());
    assert!(GgufWriter::new().alignment(24).is_err());
}

/// A tensor made as the file is written gives the same file as its bytes given up front.
#[test]
fn lazily_filled_tensors_write_the_same_file() {
    let bytes: Vec<u8> = (0..34 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let mut eager = GgufWriter::new();
    eager.set_u32("a", 1);
    eager.add_f32("n", &[3], &[1.0, 2.0, 3.0]).unwrap();
    eager
        .add_tensor("w", &[32, 3], GgmlType::Q8_0, bytes.clone())
        .unwrap();
    let mut lazy = GgufWriter::new();
    lazy.set_u32("a", 1);
    lazy.add_f32("n", &[3], &[1.0, 2.0, 3.0]).unwrap();
    let b = bytes.clone();
    lazy.add_tensor_with(
        "w",
        &[32, 3],
        GgmlType::Q8_0,
        Box::new(move |out: &mut [u8]| out.copy_from_slice(&b)),
    )
    .unwrap();
    assert_eq!(lazy.to_bytes(), eager.to_bytes());
    let h = parse(&lazy.to_bytes()).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert!(lazy
        .add_tensor_with("w", &[32], GgmlType::Q8_0, Box::new(|_: &mut [u8]| {}))
        .is_err());
}

/// A sparse file is the lazily filled file with zeros where the filled tensors go.
#[test]
fn sparse_files_hold_zeros_for_filled_tensors() {
    let mut w = GgufWriter::new();
    w.set_u32("a", 1);
    w.add_tensor_with(
        "w",
        &[32, 3],
        GgmlType::Q8_0,
        Box::new(|out: &mut [u8]| out.fill(7)),
    )
    .unwrap();
    w.add_f32("n", &[3], &[1.0, 2.0, 3.0]).unwrap();
    let path = std::env::temp_dir().join(format!("surplus-sparse-{}.gguf", std::process::id()));
    w.write_file_sparse(&path).unwrap();
    let got = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut want = w.to_bytes();
    let h = parse(&want).unwrap();
    let t = &h.tensors[0];
    let start = (h.data_offset + t.offset()) as usize;
    want[start..start + t.n_bytes() as usize].fill(0);
    assert_eq!(got, want);
}

/// Inputs the fuzzer found crashing the reader (or its callers), kept as regressions: each
/// must be refused, or accepted with every tensor inside the file.
#[test]
fn fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(h) = parse(&bytes) {
            for t in &h.tensors {
                assert!(h.data_offset + t.offset() + t.n_bytes() <= bytes.len() as u64);
            }
        }
        n += 1;
    }
    assert!(n >= 1);
    // The first find: a zero-sized tensor whose data section would start past the end.
    let b = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fuzz/zero-size-tensor-past-eof.crash"),
    )
    .unwrap();
    let e = parse(&b).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}
