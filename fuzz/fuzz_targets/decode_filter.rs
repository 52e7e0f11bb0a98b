#![no_main]
//! Arbitrary bytes as a containerd snapshot `List` filter: must not panic,
//! and `name==X` matches a snapshot named X.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::frontend::snapshotter::fuzz_filter(data);
});
