//! Arbitrary bytes as an `.npy` file: reading returns an array or an
//! error, never panics or allocates what the bytes do not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln::npy::from_bytes(data, "fuzz");
});
