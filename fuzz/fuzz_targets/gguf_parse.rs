//! Fuzz target: the GGUF reader must return Ok or a typed error for any input, never panic,
//! hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = gguf::parse(data) {
        // Whatever was accepted must be self-consistent.
        for t in &h.tensors {
            let start = h.data_offset + t.offset();
            assert!(start + t.n_bytes() <= data.len() as u64);
            let _ = &data[start as usize..(start + t.n_bytes()) as usize];
        }
        for (k, v) in h.metadata.iter() {
            let _ = (k.len(), v.to_string());
        }
    }
});
