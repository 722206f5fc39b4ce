//! ldct_imaging::untrusted::nifti under libFuzzer (the reader as the server or trainer calls it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ldct_imaging::untrusted::nifti(data);
});
