//! The server's .npy path: the header, then the data.
#![no_main]
use ldct_imaging::npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = npy::header(data) {
        // What the server accepts before decoding: 2-D, within CT sizes.
        let count = h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if h.shape.len() != 2 || count.is_none_or(|n| n > 2048 * 2048) {
            return;
        }
    }
    let _ = npy::parse(data).and_then(|a| a.into_image());
});
