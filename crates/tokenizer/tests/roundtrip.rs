//! Decoding gives back what was encoded (property test per model), and the streaming
//! decoder holds split characters until they are whole.

use proptest::prelude::*;
use tokenizer::{StreamDecoder, Tokenizer};

fn load(name: &str) -> Tokenizer {
    let g = gguf::Gguf::open(registry::test_model(name)).unwrap();
    Tokenizer::from_metadata(g.metadata()).unwrap()
}

fn check_round_trip(l: &Loaded, text: &str) -> Result<(), TestCaseError> {
    // A byte-level vocabulary may lack tokens for bytes that never occur in its training
    // text (SmolLM2 has none for 0xF1, which only starts code points of planes 4 to 15):
    // such bytes cannot come back, in llama.cpp either.
    prop_assume!(text.bytes().all(|b| l.bytes[b as usize]));
    // Text from users: special parsing off, no BOS.
    let ids = l.tok.encode(text, false, false);
    prop_assert_eq!(l.tok.decode(&ids, true), text);
    Ok(())
}

/// A tokenizer and which bytes some token of it prints alone.
struct Loaded {
    tok: Tokenizer,
    bytes: [bool; 256],
}

fn load_with_bytes(name: &str) -> Loaded {
    let tok = load(name);
    let mut bytes = [false; 256];
    for i in 0..tok.vocab_size() as u32 {
        if let [b] = tok.piece(i, false) {
            bytes[*b as usize] = true;
        }
    }
    Loaded { tok, bytes }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn smollm2_round_trips(text in "\\PC{0,60}|.{0,40}") {
        thread_local!(static T: Loaded = load_with_bytes("smollm2-135m"));
        T.with(|t| check_round_trip(t, &text))?;
    }

    #[test]
    fn qwen2_round_trips(text in "\\PC{0,60}|.{0,40}") {
        thread_local!(static T: Loaded = load_with_bytes("qwen2.5-coder-0.5b"));
        T.with(|t| check_round_trip(t, &text))?;
    }

    #[test]
    fn gemma3_round_trips(text in "\\PC{0,60}|.{0,40}") {
        thread_local!(static T: Loaded = load_with_bytes("gemma3-270m"));
        T.with(|t| check_round_trip(t, &text))?;
    }
}

/// Streams `ids` one at a time; returns the text and how many pushes printed nothing.
fn stream(tok: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut dec = StreamDecoder::new(false);
    let mut out = String::new();
    let mut held = 0;
    for &id in ids {
        let before = out.len();
        dec.push(tok, id, &mut out);
        if out.len() == before {
            held += 1;
        }
    }
    dec.finish(&mut out);
    (out, held)
}

#[test]
fn streaming_holds_split_characters() {
    let text = "emoji 🤖🚀 👍🏽 and 日本語のテキストと中文文本 ok";
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"] {
        let tok = load(name);
        // Gemma's vocabulary has these emoji whole; a private-use character is not in it
        // and falls back to byte tokens.
        let text = if name == "gemma3-270m" {
            format!("{text} \u{10FFFD}")
        } else {
            text.to_string()
        };
        let ids = tok.encode(&text, false, false);
        // Some token of this text ends inside a character (in each of these vocabularies
        // emoji are split into byte tokens), and nothing broken is ever printed.
        let pieces_split = ids
            .iter()
            .any(|&id| std::str::from_utf8(tok.piece(id, false)).is_err());
        assert!(
            pieces_split,
            "{name}: expected a split character in {ids:?}"
        );
        let (out, held) = stream(&tok, &ids);
        assert_eq!(out, text, "{name}");
        assert!(held > 0, "{name}");
    }
}

#[test]
fn streaming_replaces_invalid_bytes_and_flushes_incomplete_ones() {
    let tok = load("qwen2.5-coder-0.5b");
    // A lone continuation byte (0x80) is invalid; the first byte of a 4-byte character
    // (0xF0) at the end is incomplete.
    let byte_id = |b: u8| {
        (0..tok.vocab_size() as u32)
            .find(|&i| tok.piece(i, false) == [b])
            .unwrap()
    };
    let hi = tok.encode("hi", false, false);
    let mut ids = hi.clone();
    ids.push(byte_id(0x80));
    ids.extend(&hi);
    ids.push(byte_id(0xF0));
    let (out, _) = stream(&tok, &ids);
    assert_eq!(out, "hi\u{FFFD}hi\u{FFFD}");
}
