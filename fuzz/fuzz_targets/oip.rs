//! ldct_serve::untrusted::oip under libFuzzer (the request parser as the handler calls it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ldct_serve::untrusted::oip(data);
});
