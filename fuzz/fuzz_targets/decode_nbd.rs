#![no_main]
//! Parse arbitrary bytes as NBD request headers and option payloads: must not panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::frontend::nbd::fuzz_request(data);
});
