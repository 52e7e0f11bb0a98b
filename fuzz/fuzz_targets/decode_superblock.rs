#![no_main]
//! Decode arbitrary bytes as a superblock: must not panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::thin::store::fuzzing::superblock(data);
});
