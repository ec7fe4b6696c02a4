//! Split models: every part opened as one model, whichever part is named.

use gguf::{split_path, Error, Gguf, GgufWriter, Value};

fn part(no: u16, count: u16, total: i32, tensors: &[(&str, f32)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    if no == 0 {
        w.set_str("general.architecture", "llama");
    }
    w.set("split.no", Value::U16(no));
    w.set("split.count", Value::U16(count));
    w.set("split.tensors.count", Value::I32(total));
    for (name, v) in tensors {
        w.add_f32(name, &[4], &[*v; 4]).unwrap();
    }
    w
}

#[test]
fn split_model_opens_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("tiny");
    part(0, 3, 4, &[("a", 1.0), ("b", 2.0)])
        .write_file(split_path(&prefix, 1, 3))
        .unwrap();
    part(1, 3, 4, &[("c", 3.0)])
        .write_file(split_path(&prefix, 2, 3))
        .unwrap();
    part(2, 3, 4, &[("d", 4.0)])
        .write_file(split_path(&prefix, 3, 3))
        .unwrap();
    for named in 1..=3 {
        let g = Gguf::open(split_path(&prefix, named, 3)).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.paths().len(), 3);
        let names: Vec<_> = g.tensors().iter().map(|t| t.name()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        for (name, v) in [("a", 1.0f32), ("c", 3.0), ("d", 4.0)] {
            let t = g.tensor(name).unwrap();
            let bytes = g.tensor_data(t);
            assert_eq!(f32::from_le_bytes(bytes[..4].try_into().unwrap()), v);
        }
    }
    std::fs::remove_file(split_path(&prefix, 3, 3)).unwrap();
    let e = Gguf::open(split_path(&prefix, 1, 3)).err().unwrap();
    assert!(
        matches!(e, Error::Split(ref m) if m.contains("missing")),
        "{e}"
    );
}

#[test]
fn split_metadata_must_agree_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd-name.gguf");
    part(0, 2, 2, &[("a", 1.0)]).write_file(&p).unwrap();
    let e = Gguf::open(&p).err().unwrap();
    assert!(e.to_string().contains("NAME-00001-of-00002.gguf"), "{e}");

    let prefix = dir.path().join("m");
    part(0, 2, 3, &[("a", 1.0)])
        .write_file(split_path(&prefix, 1, 2))
        .unwrap();
    part(1, 2, 3, &[("b", 1.0)])
        .write_file(split_path(&prefix, 2, 2))
        .unwrap();
    let e = Gguf::open(split_path(&prefix, 1, 2)).err().unwrap();
    assert!(e.to_string().contains("split.tensors.count"), "{e}");
}
