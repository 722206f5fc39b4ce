//! ldct_serve::untrusted::dimse under libFuzzer (P-DATA reassembly, DIMSE command sets and
//! the received data set, as the C-STORE SCP handles them).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ldct_serve::untrusted::dimse(data);
});
