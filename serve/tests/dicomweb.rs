//! DICOMweb in process: the multipart/related parser and writer, the STOW-RS receiver
//! (its PS3.18 JSON response, failure reasons, the spool it fills) and its 4xx errors,
//! the pull-job routes. The push to a real PACS (Orthanc) is tests/python/
//! test_dicomweb_orthanc.py.

mod common;

use std::path::Path;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use actix_web::web::Bytes;
use clap::Parser;
use common::*;
use ldct_imaging::derived::{derived_series_instance_uid, derived_sop_instance_uid, DerivedModel};
use ldct_serve::config::Config;
use ldct_serve::dicomweb::multipart::{self, MultipartError};
use ldct_serve::dicomweb::service::DicomWeb;
use ldct_serve::http::app;
use ldct_serve::state::AppState;
use serde_json::Value;

const PACS: &str = "http://127.0.0.1:9/dicom-web";
const MODEL: DerivedModel<'static> = DerivedModel {
    name: "tiny",
    version: "0.1.0",
    sha256: "",
    strength: 1.0,
};

fn tiny_models() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_model_dir(
        &tmp.path().join("tiny"),
        "tiny",
        "0.1.0",
        &smoothing_model(),
        4,
    );
    tmp
}

/// The in-process state with DICOMweb on: an unreachable PACS and no push worker, so
/// the spool keeps what STOW-RS accepted.
fn dw_state(models: &Path, spool: &Path, extra: &[&str]) -> AppState {
    let mut st = state(models, Options::default());
    let spool = spool.display().to_string();
    let mut args = vec!["ldct-serve", "--pacs-url", PACS, "--spool-dir", &spool];
    args.extend_from_slice(extra);
    let cfg = Config::try_parse_from(args).unwrap();
    st.dicomweb = DicomWeb::from_config(&cfg).unwrap().map(Arc::new);
    st
}

fn file(name: &str) -> Bytes {
    Bytes::from(std::fs::read(ldct_testkit::dicom_test_file(name)).unwrap())
}

fn stow_body(parts: &[Bytes]) -> (String, Bytes) {
    let b = multipart::boundary_for(parts);
    (
        multipart::content_type("application/dicom", &b),
        multipart::write(parts, "application/dicom", &b),
    )
}

fn stow_request(uri: &str, content_type: &str, body: Bytes) -> TestRequest {
    TestRequest::post()
        .uri(uri)
        .insert_header(("content-type", content_type))
        .insert_header(("accept", "application/dicom+json"))
        .set_payload(body)
}

async fn json_of(res: actix_web::dev::ServiceResponse) -> Value {
    let bytes = test::read_body(res).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)))
}

fn seq<'a>(v: &'a Value, tag: &str) -> Vec<&'a Value> {
    v[tag]["Value"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn first(item: &Value, tag: &str) -> Value {
    item[tag]["Value"][0].clone()
}

fn spooled(spool: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn multipart_round_trip_keeps_every_byte() {
    // Binary parts, one that contains CRLF + "--" and a near-boundary.
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(b"\r\n--not-the-boundary\r\n\0\xff"),
        Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>()),
        Bytes::new(),
    ];
    let b = multipart::boundary_for(&parts);
    assert!(b.len() <= 70);
    let body = multipart::write(&parts, "application/dicom", &b);
    let ct = multipart::content_type("application/dicom", &b);
    let (mt, boundary) = multipart::related(&ct).unwrap();
    assert_eq!(mt.param("type"), Some("application/dicom"));
    assert_eq!(boundary, b);
    let back = multipart::parse(&body, &boundary, 10).unwrap();
    assert_eq!(back.len(), 3);
    for (p, want) in back.iter().zip(&parts) {
        assert_eq!(&p.body, want);
        assert_eq!(p.header("CONTENT-TYPE"), Some("application/dicom"));
        assert_eq!(p.media_type().unwrap().essence, "application/dicom");
    }
    // A boundary that occurs in a part is never chosen.
    let tricky = vec![Bytes::from(format!("xx--{b}yy"))];
    assert_ne!(multipart::boundary_for(&tricky), b);
}

#[test]
fn multipart_parser_is_lenient_where_harmless_and_strict_where_data_is_lost() {
    let ok = |s: &'static str| multipart::parse(&Bytes::from_static(s.as_bytes()), "XyZ", 10);
    // Preamble, transport padding, folded header, no-header part, epilogue.
    let parts = ok("preamble\r\n--XyZ  \r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n\r\nAAA\r\n--XyZ\r\n\r\nBB\r\n--XyZ--\r\nepilogue")
        .unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(&parts[0].body[..], b"AAA");
    assert_eq!(
        parts[0].media_type().unwrap().param("transfer-syntax"),
        Some("1.2.840.10008.1.2.1")
    );
    assert!(parts[1].headers.is_empty());
    assert_eq!(&parts[1].body[..], b"BB");
    // Content that merely contains the delimiter followed by other characters.
    let parts = ok("--XyZ\r\n\r\nA\r\n--XyZW\r\n--XyZ--").unwrap();
    assert_eq!(&parts[0].body[..], b"A\r\n--XyZW");

    assert_eq!(ok("no delimiter at all"), Err(MultipartError::NoDelimiter));
    // Truncated: the closing delimiter is missing.
    assert_eq!(
        ok("--XyZ\r\nContent-Type: application/dicom\r\n\r\nAAAA"),
        Err(MultipartError::Unterminated)
    );
    assert_eq!(
        ok("--XyZ\r\n\r\nA\r\n--XyZ"),
        Err(MultipartError::Unterminated)
    );
    assert_eq!(ok("--XyZ--"), Err(MultipartError::Empty));
    assert!(matches!(
        ok("--XyZ\r\nbroken header\r\n\r\nA\r\n--XyZ--"),
        Err(MultipartError::Part { index: 0, .. })
    ));
    assert!(matches!(
        ok("--XyZ\r\nContent-Type: a/b\r\nA\r\n--XyZ--"),
        Err(MultipartError::Part { index: 0, .. })
    ));
    assert!(matches!(
        ok("--XyZjunk\r\n\r\nA\r\n--XyZ--"),
        Err(MultipartError::Part { .. })
    ));
    let many = "--XyZ\r\n\r\nA\r\n".repeat(11) + "--XyZ--";
    assert_eq!(
        multipart::parse(&Bytes::from(many), "XyZ", 10),
        Err(MultipartError::TooManyParts(10))
    );
}

#[actix_web::test]
async fn stow_denoises_ct_spools_it_and_reports_every_failure() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(dw_state(models.path(), spool.path(), &[]))).await;
    let ct = file("CT_small.dcm");
    let src = ldct_imaging::dicom::read_dicom_bytes(&ct).unwrap().meta;
    let parts = vec![
        ct.clone(),
        file("MR_small.dcm"),
        Bytes::from_static(b"this is not DICOM at all, just text"),
        ct.slice(..ct.len() / 2),
        file("MR_small_jpeg_ls_lossless.dcm"),
    ];
    let (ctype, body) = stow_body(&parts);
    let res = test::call_service(
        &svc,
        stow_request("/dicomweb/studies?model=tiny", &ctype, body).to_request(),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::ACCEPTED,
        "some stored, some failed"
    );
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/dicom+json"
    );
    let v = json_of(res).await;

    let stored = seq(&v, "00081199");
    assert_eq!(stored.len(), 1, "{v:#}");
    let item = stored[0];
    let sop = derived_sop_instance_uid(&src.sop_instance_uid, MODEL);
    let series = derived_series_instance_uid(src.series_instance_uid.as_deref().unwrap(), MODEL);
    let study = src.study_instance_uid.clone().unwrap();
    assert_eq!(first(item, "00081150"), src.sop_class_uid.as_str());
    assert_eq!(first(item, "00081155"), src.sop_instance_uid.as_str());
    assert_eq!(item["00081155"]["vr"], "UI");
    assert_eq!(
        first(item, "00081190"),
        format!("{PACS}/studies/{study}/series/{series}/instances/{sop}").as_str()
    );
    assert_eq!(first(item, "00090010"), "ldct");
    assert_eq!(first(item, "00091002"), sop.as_str());
    assert_eq!(first(item, "00091003"), series.as_str());
    assert_eq!(
        first(&v, "00081190"),
        format!("{PACS}/studies/{study}").as_str()
    );

    let failed = seq(&v, "00081198");
    let codes: Vec<u64> = failed
        .iter()
        .map(|f| first(f, "00081197").as_u64().unwrap())
        .collect();
    assert_eq!(codes, [0x0122, 0xC000, 0xC000, 0xC122], "{v:#}");
    assert_eq!(failed[0]["00081197"]["vr"], "US");
    let reasons: Vec<String> = failed
        .iter()
        .map(|f| first(f, "00091001").as_str().unwrap().to_owned())
        .collect();
    assert!(reasons[0].contains("not a CT image"), "{reasons:?}");
    assert!(reasons[1].contains("not a DICOM file"), "{reasons:?}");
    assert!(reasons[2].contains("truncated"), "{reasons:?}");
    assert!(reasons[3].contains("transfer syntax"), "{reasons:?}");
    // What is known of a failed instance is named: the MR's UIDs.
    let mr = ldct_imaging::dicom::read_dicom_bytes(&file("MR_small.dcm"))
        .unwrap()
        .meta;
    assert_eq!(first(failed[0], "00081155"), mr.sop_instance_uid.as_str());
    assert!(failed[1].get("00081155").is_none());

    // The spool holds the derived instance, named by its deterministic UID.
    let files = spooled(spool.path());
    assert_eq!(files.len(), 1);
    // `<seq>-<SOP Instance UID>-<sha256 of the source pixels>.dcm`.
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let parts: Vec<&str> = name.trim_end_matches(".dcm").split('-').collect();
    assert_eq!(parts.len(), 3, "{name}");
    assert_eq!(parts[1], sop, "{name}");
    assert_eq!(parts[2].len(), 64, "{name}");
    let derived =
        ldct_imaging::dicom::read_dicom_bytes(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(derived.meta.sop_instance_uid, sop);
    assert_eq!(
        derived.meta.series_instance_uid.as_deref(),
        Some(series.as_str())
    );
    assert_eq!(
        derived.meta.study_instance_uid.as_deref(),
        Some(study.as_str())
    );
    assert!(derived
        .meta
        .series_description
        .as_deref()
        .unwrap()
        .ends_with("[ldct tiny 0.1.0]"));

    // A retry (same instance again, by the study form): 200, nothing duplicated.
    let (ctype, body) = stow_body(std::slice::from_ref(&ct));
    let res = test::call_service(
        &svc,
        stow_request(&format!("/dicomweb/studies/{study}"), &ctype, body).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seq(&json_of(res).await, "00081199").len(), 1);
    assert_eq!(spooled(spool.path()).len(), 1);

    // Another study's URL: the instance does not match (A900), none stored -> 409.
    let (ctype, body) = stow_body(std::slice::from_ref(&ct));
    let res = test::call_service(
        &svc,
        stow_request("/dicomweb/studies/1.2.3.4", &ctype, body).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let v = json_of(res).await;
    let f = seq(&v, "00081198");
    assert_eq!(first(f[0], "00081197"), 0xA900);
    assert!(first(f[0], "00091001")
        .as_str()
        .unwrap()
        .contains("does not match"));
    assert!(v.get("00081199").is_none());

    // ldct's own output is not denoised again (auto-forward loop guard).
    let (ctype, body) = stow_body(&[Bytes::from(std::fs::read(&files[0]).unwrap())]);
    let res = test::call_service(
        &svc,
        stow_request("/dicomweb/studies", &ctype, body).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let v = json_of(res).await;
    let f = seq(&v, "00081198");
    assert_eq!(first(f[0], "00081197"), 0x0110);
    assert!(first(f[0], "00091001")
        .as_str()
        .unwrap()
        .contains("already denoised by ldct"));
    // A non-DICOM part type fails that part.
    let b = "BoUnDaRy";
    let body = format!("--{b}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{b}--\r\n");
    let res = test::call_service(
        &svc,
        stow_request(
            "/dicomweb/studies",
            &format!("multipart/related; type=\"application/dicom\"; boundary={b}"),
            Bytes::from(body),
        )
        .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let v = json_of(res).await;
    let f = seq(&v, "00081198");
    assert_eq!(first(f[0], "00081197"), 0xC000);
    assert!(first(f[0], "00091001")
        .as_str()
        .unwrap()
        .contains("text/plain"));
}

/// Calls the service and checks the JSON error.
macro_rules! expect_error {
    ($svc:expr, $req:expr, $status:expr, $code:expr $(,)?) => {
        check_error(
            test::call_service($svc, $req.to_request()).await,
            $status,
            $code,
        )
        .await
    };
}

async fn check_error(res: actix_web::dev::ServiceResponse, status: u16, code: &str) {
    assert_eq!(res.status().as_u16(), status);
    let v = json_of(res).await;
    assert_eq!(v["error"]["code"], code, "{v}");
}

#[actix_web::test]
async fn bad_stow_requests_are_4xx_with_the_json_error() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(dw_state(
        models.path(),
        spool.path(),
        &["--dicomweb-max-body-bytes", "100000"],
    )))
    .await;
    let ct = file("CT_small.dcm");
    let (ctype, good) = stow_body(std::slice::from_ref(&ct));
    let req = |ct: &str, body: Bytes| stow_request("/dicomweb/studies", ct, body);

    expect_error!(
        &svc,
        req("application/dicom", ct.clone()),
        415,
        "unsupported_media_type"
    );
    expect_error!(
        &svc,
        req("multipart/form-data; boundary=x", good.clone()),
        415,
        "unsupported_media_type"
    );
    expect_error!(
        &svc,
        req(
            "multipart/related; type=\"application/dicom+json\"; boundary=x",
            good.clone()
        ),
        415,
        "unsupported_media_type",
    );
    expect_error!(
        &svc,
        TestRequest::post()
            .uri("/dicomweb/studies")
            .set_payload(good.clone()),
        415,
        "unsupported_media_type",
    );
    expect_error!(
        &svc,
        req(
            "multipart/related; type=\"application/dicom\"",
            good.clone()
        ),
        400,
        "invalid_multipart"
    );
    // The boundary of the header is not the body's.
    expect_error!(
        &svc,
        req(
            "multipart/related; type=\"application/dicom\"; boundary=other",
            good.clone()
        ),
        400,
        "invalid_multipart",
    );
    // Truncated multipart: no closing delimiter.
    expect_error!(
        &svc,
        req(&ctype, good.slice(..good.len() - 20)),
        400,
        "invalid_multipart"
    );
    expect_error!(&svc, req(&ctype, Bytes::new()), 400, "empty_body");
    expect_error!(
        &svc,
        req(&ctype, Bytes::from(vec![b'x'; 100_001])),
        413,
        "payload_too_large"
    );
    expect_error!(
        &svc,
        stow_request("/dicomweb/studies?model=nope", &ctype, good.clone()),
        404,
        "unknown_model",
    );
    expect_error!(
        &svc,
        stow_request("/dicomweb/studies/not-a-uid", &ctype, good.clone()),
        400,
        "bad_request",
    );
    expect_error!(
        &svc,
        TestRequest::get().uri("/dicomweb/studies"),
        405,
        "method_not_allowed",
    );
    // Nothing bad reached the spool.
    assert!(spooled(spool.path()).is_empty());
}

#[actix_web::test]
async fn a_full_spool_is_503_with_out_of_resources() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(dw_state(
        models.path(),
        spool.path(),
        &["--spool-max-bytes", "1000"],
    )))
    .await;
    let (ctype, body) = stow_body(&[file("CT_small.dcm")]);
    let res = test::call_service(
        &svc,
        stow_request("/dicomweb/studies", &ctype, body).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let v = json_of(res).await;
    let f = seq(&v, "00081198");
    assert_eq!(first(f[0], "00081197"), 0xA700);
    assert!(first(f[0], "00091001")
        .as_str()
        .unwrap()
        .contains("spool is full"));
    assert!(spooled(spool.path()).is_empty());
}

#[actix_web::test]
async fn pull_jobs_are_accepted_persisted_and_reported() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(dw_state(models.path(), spool.path(), &[]))).await;
    // No runner is started here: the job stays queued.
    let res = test::call_service(
        &svc,
        TestRequest::post()
            .uri("/v1/studies/1.2.3/denoise?series=1.2.3.4&model=tiny")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let job = json_of(res).await;
    assert_eq!(job["state"], "queued");
    assert_eq!(job["study_instance_uid"], "1.2.3");
    assert_eq!(job["series_instance_uid"], "1.2.3.4");
    assert_eq!(job["model"], "tiny");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    let res = test::call_service(&svc, TestRequest::get().uri(&location).to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let again = json_of(res).await;
    assert_eq!(again["id"], job["id"]);
    assert_eq!(again["progress"]["done"], 0);
    // Its state file is on disk (default: <spool-dir>/jobs).
    let id = job["id"].as_str().unwrap();
    assert!(spool
        .path()
        .join("jobs")
        .join(format!("{id}.json"))
        .is_file());

    expect_error!(
        &svc,
        TestRequest::get().uri("/v1/jobs/0123456789abcdef0123456789abcdef"),
        404,
        "not_found"
    );
    expect_error!(
        &svc,
        TestRequest::get().uri("/v1/jobs/..%2f..%2fetc"),
        404,
        "not_found"
    );
    expect_error!(
        &svc,
        TestRequest::post().uri("/v1/studies/x.y/denoise"),
        400,
        "bad_request"
    );
    expect_error!(
        &svc,
        TestRequest::post().uri("/v1/studies/1.2/denoise?series=a"),
        400,
        "bad_request"
    );
    expect_error!(
        &svc,
        TestRequest::post().uri("/v1/studies/1.2/denoise?model=nope"),
        404,
        "unknown_model"
    );
}

#[actix_web::test]
async fn a_reused_sop_instance_uid_with_other_pixels_is_a_failure_not_a_silent_drop() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(dw_state(models.path(), spool.path(), &[]))).await;
    let ct = file("CT_small.dcm");
    // The same instance with other pixel data: same UIDs, another image.
    let mut obj = ldct_imaging::dicom::parse_dicom_bytes(&ct).unwrap();
    let pixels = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    let flipped: Vec<u8> = pixels.iter().map(|b| b ^ 0x05).collect();
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OW,
        dicom_core::PrimitiveValue::from(flipped),
    ));
    let mut other = Vec::new();
    obj.write_all(&mut other).unwrap();
    let store = |part: Bytes| {
        let (ctype, body) = stow_body(&[part]);
        stow_request("/dicomweb/studies?model=tiny", &ctype, body).to_request()
    };
    let res = test::call_service(&svc, store(ct.clone())).await;
    assert_eq!(res.status(), StatusCode::OK);
    // A retry of the same instance is a success again (idempotent), nothing added.
    let res = test::call_service(&svc, store(ct.clone())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(spooled(spool.path()).len(), 1);
    // The other pixels under the same SOP Instance UID: refused with a reason.
    let res = test::call_service(&svc, store(Bytes::from(other.clone()))).await;
    assert_eq!(res.status(), StatusCode::CONFLICT, "every instance failed");
    let v = json_of(res).await;
    let failed = seq(&v, "00081198");
    assert_eq!(failed.len(), 1, "{v:#}");
    assert_eq!(first(failed[0], "00081197").as_u64(), Some(0x0110));
    assert!(v.to_string().contains("other pixel data"), "{v:#}");
    // The first copy is what stays queued.
    let files = spooled(spool.path());
    assert_eq!(files.len(), 1);
    // Still a conflict after a restart (the spool reopened from its folder), and the
    // same instance still a retry.
    drop(svc);
    let svc = test::init_service(app(dw_state(models.path(), spool.path(), &[]))).await;
    let res = test::call_service(&svc, store(Bytes::from(other))).await;
    assert_eq!(res.status(), StatusCode::CONFLICT, "after a restart");
    let res = test::call_service(&svc, store(ct)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(spooled(spool.path()), files);
}

#[actix_web::test]
async fn pull_jobs_beyond_max_active_jobs_get_429_with_retry_after() {
    let models = tiny_models();
    let spool = tempfile::tempdir().unwrap();
    let st = dw_state(models.path(), spool.path(), &["--max-active-jobs", "3"]);
    let svc = test::init_service(app(st)).await;
    // No runner: the jobs stay queued, so all three places stay taken.
    for i in 0..3 {
        let res = test::call_service(
            &svc,
            TestRequest::post()
                .uri(&format!("/v1/studies/1.2.{i}/denoise"))
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let res = test::call_service(
        &svc,
        TestRequest::post()
            .uri("/v1/studies/1.2.9/denoise")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    assert_eq!(json_of(res).await["error"]["code"], "too_many_jobs");
    // Asking again for a study with an active job is not a new job: still 202.
    let res = test::call_service(
        &svc,
        TestRequest::post()
            .uri("/v1/studies/1.2.0/denoise")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // Nothing beyond the cap reached the disk.
    let files = std::fs::read_dir(spool.path().join("jobs"))
        .unwrap()
        .count();
    assert_eq!(files, 3);
}

#[actix_web::test]
async fn without_a_pacs_the_dicomweb_routes_are_501() {
    let models = tiny_models();
    let svc = test::init_service(app(state(models.path(), Options::default()))).await;
    let (ctype, body) = stow_body(&[file("CT_small.dcm")]);
    expect_error!(
        &svc,
        stow_request("/dicomweb/studies", &ctype, body),
        501,
        "pacs_not_configured"
    );
    expect_error!(
        &svc,
        TestRequest::post().uri("/v1/studies/1.2/denoise"),
        501,
        "pacs_not_configured"
    );
    expect_error!(
        &svc,
        TestRequest::get().uri("/v1/jobs/0123456789abcdef0123456789abcdef"),
        501,
        "pacs_not_configured"
    );
}

/// A stand-in PACS for what Orthanc cannot be made to do on demand: be overloaded once,
/// then refuse one instance of a batch. (The real push is tests/python/
/// test_dicomweb_orthanc.py.)
#[actix_web::test]
async fn the_push_worker_retries_then_files_away_what_the_pacs_refuses() {
    use ldct_serve::dicomweb::client::{PacsAuth, PacsConfig};
    use ldct_serve::dicomweb::push::{self, PushPolicy};
    use ldct_serve::dicomweb::spool::{Spool, Status};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    type Seen = Arc<Mutex<Vec<(Option<String>, bool, usize, Option<String>)>>>;
    let hits = Arc::new(AtomicUsize::new(0));
    let seen: Seen = Arc::default();
    let (h, s) = (hits.clone(), seen.clone());
    let srv = actix_web::HttpServer::new(move || {
        let (h, s) = (h.clone(), s.clone());
        actix_web::App::new().route(
            "/dw/studies",
            actix_web::web::post().to(move |req: actix_web::HttpRequest, body: Bytes| {
                let (h, s) = (h.clone(), s.clone());
                async move {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let (_, b) = multipart::related(&header("content-type").unwrap()).unwrap();
                    let parts = multipart::parse(&body, &b, 100).unwrap();
                    s.lock().unwrap().push((
                        header("content-length"),
                        header("transfer-encoding").is_some(),
                        parts.len(),
                        header("authorization"),
                    ));
                    if h.fetch_add(1, Ordering::SeqCst) == 0 {
                        return actix_web::HttpResponse::ServiceUnavailable().finish();
                    }
                    actix_web::HttpResponse::Ok()
                        .content_type("application/dicom+json")
                        .body(
                            serde_json::json!({
                                "00081198": {"vr": "SQ", "Value": [{
                                    "00081155": {"vr": "UI", "Value": ["1.2.4"]},
                                    "00081197": {"vr": "US", "Value": [0xC000]}
                                }]},
                                "00081199": {"vr": "SQ", "Value": [{
                                    "00081155": {"vr": "UI", "Value": ["1.2.3"]}
                                }]}
                            })
                            .to_string(),
                        )
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = srv.addrs()[0].port();
    let server = srv.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
    spool.enqueue("1.2.3", b"first instance", &[1; 32]).unwrap();
    spool
        .enqueue("1.2.4", b"second instance", &[2; 32])
        .unwrap();
    let pacs = PacsConfig::new(
        &format!("http://127.0.0.1:{port}/dw/"),
        PacsAuth::Bearer("t0k".into()),
        Duration::from_secs(10),
        1 << 20,
        None,
    )
    .unwrap();
    let policy = PushPolicy {
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_millis(200),
        ..PushPolicy::default()
    };
    let worker = actix_web::rt::spawn(push::run(
        spool.clone(),
        push::PushTarget::Stow(pacs),
        policy,
    ));
    for _ in 0..200 {
        if spool.depth() == 0 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spool.depth(), 0, "the spool did not drain");
    assert_eq!(spool.status("1.2.3"), Status::Absent);
    match spool.status("1.2.4") {
        Status::Failed(reason) => assert!(reason.contains("0xC000"), "{reason}"),
        other => panic!("1.2.4 is {other:?}"),
    }
    assert!(dir.path().join("failed").read_dir().unwrap().count() >= 1);
    // 503 first (retried after the backoff), then the batch again.
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    for (len, chunked, parts, auth) in seen.lock().unwrap().iter() {
        assert!(len.is_some() && !chunked, "Content-Length, never chunked");
        assert_eq!(*parts, 2);
        assert_eq!(auth.as_deref(), Some("Bearer t0k"));
    }
    worker.abort();
    handle.stop(false).await;
}
