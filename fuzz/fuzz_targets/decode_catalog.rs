#![no_main]
//! Decode arbitrary bytes as a catalog: must not panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::thin::store::fuzzing::catalog(data);
});
