#![no_main]
//! Arbitrary bytes as a Docker volume plugin call's body: must not panic,
//! and a name the plugin accepts maps to a valid vpool volume name.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::frontend::docker::fuzz_body(data);
});
