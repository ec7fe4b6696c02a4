//! Bad inputs are clear errors, never panics: undecodable, truncated, empty, oversized or
//! zero-sized images, and projector files of another kind.

use std::path::PathBuf;

use gguf::{Array, GgufWriter, Value};
use vision::{decode, DecodeLimits, Projector, VisionError};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/vision")
}

/// A PNG signature and an IHDR chunk claiming `w` × `h`, then the start of an IDAT chunk
/// (a few bytes of a zlib stream, so the pixels are missing).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let idat = b"IDAT\x78\x9c\x00".to_vec();
    for chunk in [ihdr, idat] {
        v.extend((chunk.len() as u32 - 4).to_be_bytes());
        v.extend(&chunk);
        v.extend(crc32(&chunk).to_be_bytes());
    }
    v
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// (A truncated JPEG is not among them: the decoder fills the missing blocks with grey, as
/// many decoders do; it never fails worse than that.)
#[test]
fn bad_images_are_errors() {
    let lim = DecodeLimits::default();
    let png = std::fs::read(data().join("shapes-300x200.png")).unwrap();
    for (what, bytes) in [
        ("empty", vec![]),
        (
            "text",
            b"this is not an image, just text named .jpg\n".to_vec(),
        ),
        ("truncated png", png[..png.len() / 2].to_vec()),
        ("header only", png_header(300, 200)),
        ("zero width", png_header(0, 200)),
    ] {
        let Err(e) = decode(&bytes, &lim) else {
            panic!("{what} decoded");
        };
        assert!(matches!(e, VisionError::Image(_)), "{what}: {e}");
    }
    let e = decode(&png_header(20000, 20000), &lim).unwrap_err();
    assert!(matches!(e, VisionError::ImageTooLarge(_)), "{e}");
    let small = DecodeLimits {
        max_bytes: 100,
        ..lim
    };
    assert!(matches!(
        decode(&png, &small),
        Err(VisionError::ImageTooLarge(_))
    ));
}

#[test]
fn other_projector_types_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.gguf");
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "clip")
        .set_str("clip.projector_type", "llava")
        .set_u32("clip.vision.image_size", 224)
        .set_u32("clip.vision.patch_size", 14)
        .set_u32("clip.vision.embedding_length", 64)
        .set_u32("clip.vision.feed_forward_length", 128)
        .set_u32("clip.vision.block_count", 1)
        .set_u32("clip.vision.attention.head_count", 4)
        .set_array("clip.vision.image_mean", Array::F32(vec![0.5; 3]))
        .set_array("clip.vision.image_std", Array::F32(vec![0.5; 3]));
    w.write_file(&path).unwrap();
    let e = Projector::open(&path).err().unwrap();
    assert_eq!(e.to_string(), "not yet supported: projector type llava");

    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama");
    w.set("clip.projector_type", Value::String("gemma3".into()));
    w.write_file(&path).unwrap();
    let e = Projector::open(&path).err().unwrap();
    assert!(matches!(e, VisionError::NotClip(_)), "{e}");
}

#[test]
fn a_projector_with_a_wrong_shape_is_refused() {
    // The text model is not a projector.
    let e = Projector::open(data().join("vision.json")).err().unwrap();
    assert!(matches!(e, VisionError::Gguf(_)), "{e}");
}
