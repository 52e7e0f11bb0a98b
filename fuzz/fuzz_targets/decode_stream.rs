#![no_main]
//! Arbitrary bytes as a send stream (what `snap receive` reads from a pipe
//! or the control API): must not panic, and what it accepts is in order.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vpool::control::stream::fuzz_stream(data);
});
