//! Arbitrary bytes as a `.kiln` file: loading returns a graph or an error,
//! never panics, hangs or allocates what the bytes do not justify; a graph
//! that loads saves and loads again to the same listing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = kiln_graph::Graph::from_bytes(data, "fuzz") {
        let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("g.kiln");
        if g.save(&path).is_ok() {
            let again = kiln_graph::Graph::load(&path).expect("a saved graph loads");
            assert_eq!(again.len(), g.len());
        }
    }
});
