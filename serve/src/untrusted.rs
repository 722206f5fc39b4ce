//! The server's parsers of request bodies, each called the way a handler calls it: what
//! the fuzz targets (`fuzz/`, `make fuzz`) drive and what the regression tests replay
//! the inputs they found against (`tests/fuzz-regressions/<target>/`, on stable in
//! `make test`). The DICOM, npy, NIfTI and NRRD readers have theirs in
//! `ldct_imaging::untrusted`. Each returns whether the bytes were accepted; every
//! outcome but a panic or an abort is a pass.

use actix_web::web::Bytes;
use ldct_imaging::limits::SliceLimits;
use ldct_proto::contract::{INPUT_NAME, OUTPUT_NAME};

use crate::dicomweb::multipart;
use crate::http::dicomweb::MAX_PARTS;
use crate::http::tensor::{decode_request, RequestLimits};

/// An entry point: the bytes in, whether they were accepted.
pub type Reader = fn(&[u8]) -> bool;

/// The targets, by the name of their fuzz target and regression folder.
pub const TARGETS: [(&str, Reader); 3] = [("multipart", stow), ("oip", oip), ("dimse", dimse)];

/// A STOW-RS request: the first line is the Content-Type header's value, the rest the
/// body, split into parts as the STOW-RS handler does.
pub fn stow(data: &[u8]) -> bool {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return false;
    };
    let Ok((_, boundary)) = multipart::related(content_type) else {
        return false;
    };
    let body = Bytes::copy_from_slice(body);
    let Ok(parts) = multipart::parse(&body, &boundary, MAX_PARTS) else {
        return false;
    };
    for p in &parts {
        let _ = (p.media_type(), p.form_name());
    }
    true
}

/// An Open Inference Protocol request as `/v2/models/{m}/infer` decodes it: when the first byte is odd the
/// next two (little endian) are the `Inference-Header-Content-Length` header (JSON then
/// binary tensor data), else the request is JSON only; the rest is the body.
pub fn oip(data: &[u8]) -> bool {
    let (json_len, body) = match data {
        [flag, a, b, rest @ ..] if flag % 2 == 1 => {
            (Some(usize::from(u16::from_le_bytes([*a, *b]))), rest)
        }
        [_, rest @ ..] => (None, rest),
        [] => (None, data),
    };
    let limits = RequestLimits {
        slice: SliceLimits::CT,
        max_slices: 64,
    };
    decode_request(body, json_len, INPUT_NAME, OUTPUT_NAME, &limits).is_ok()
}

/// P-DATA values as a DIMSE association delivers them to the SCP: records of
/// `[presentation context id][control: bit 0 command, bit 1 last fragment][length u16
/// LE][bytes]`, reassembled and their command sets decoded as `dimse::scp` does, each
/// complete C-STORE data set (implicit VR little endian) framed and decoded like a
/// received instance. Accepted when some command set decoded.
pub fn dimse(data: &[u8]) -> bool {
    use dicom_ul::pdu::{PDataValue, PDataValueType};

    use crate::dimse::scp::{part10, Incoming, Step};

    let budget = crate::budget::ByteBudget::new(64 << 20);
    let limits = SliceLimits::CT;
    let mut incoming = Incoming::new(budget.reservation(), limits.max_data_set_bytes());
    let mut rest = data;
    let mut ok = false;
    while let [pc, control, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let pdv = PDataValue {
            presentation_context_id: *pc,
            value_type: if control & 1 == 1 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: control & 2 == 2,
            data: tail[..len].to_vec(),
        };
        rest = &tail[len..];
        match incoming.take(pdv) {
            Some(Step::Command(_)) => ok = true,
            Some(Step::Store { command, data, .. }) => {
                ok = true;
                let sop = command.affected_sop_instance_uid.unwrap_or_default();
                if let Ok(file) = part10(
                    crate::dimse::message::CT_IMAGE_STORAGE,
                    &sop,
                    "1.2.840.10008.1.2",
                    &data,
                ) {
                    let _ = crate::dicomweb::process::decode_part(&file, None, None, &limits);
                }
                incoming.reservation_mut().release();
            }
            Some(Step::Protocol(_)) => return ok,
            None => {}
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::TARGETS;
    use std::path::Path;

    /// Every input a fuzzer once made a parser panic with (`tests/fuzz-regressions/<target>/`,
    /// copied there from `fuzz/artifacts/`) now comes back as a result, and the seed
    /// examples there named `ok-*` are accepted.
    #[test]
    fn fuzz_regressions_return_a_result() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
        ldct_testkit::replay_fuzz_regressions(&root, &TARGETS);
    }
}
