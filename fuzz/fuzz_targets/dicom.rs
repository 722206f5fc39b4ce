//! The server's DICOM path: parse, header checks, decode one CT slice (CT limits).
#![no_main]
use ldct_imaging::instance::decode_ct;
use ldct_imaging::limits::SliceLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_ct(data, &SliceLimits::CT);
});
