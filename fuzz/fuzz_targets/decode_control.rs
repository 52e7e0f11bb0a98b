#![no_main]
//! Arbitrary bytes as a call to the control API (method, URL, body): must
//! not panic, and a call that parses must round-trip through its route.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::control::fuzz_http(data);
});
