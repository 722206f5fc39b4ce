//! The NIfTI reader (gzip or plain) under a 64 MiB voxel bound.
#![no_main]
use ldct_imaging::nifti::parse_nifti;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_nifti(data, 64 << 20);
});
