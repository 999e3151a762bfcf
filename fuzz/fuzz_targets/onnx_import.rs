//! Arbitrary bytes as an ONNX model: importing returns a graph or an
//! error, never panics, hangs or allocates what the bytes do not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln_onnx::import_bytes(data, &kiln_onnx::ImportOptions::default());
});
