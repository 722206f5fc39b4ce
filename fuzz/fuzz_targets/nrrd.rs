//! The NRRD reader (attached data only: no file system) under a 64 MiB sample bound.
#![no_main]
use ldct_imaging::nrrd::parse_nrrd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_nrrd(data, None, 64 << 20);
});
