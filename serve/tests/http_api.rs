//! The HTTP API in process, with a tiny real ONNX model run by ONNX Runtime.

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use common::*;
use ldct_imaging::window::Normaliser;
use ldct_serve::http::app;
use ndarray::Array2;
use serde_json::{json, Value};

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

/// Reference: normalise, reflect-pad to a multiple of 4, run the formula, crop, HU.
fn expected_hu(hu: &Array2<f32>) -> Array2<f32> {
    let norm = Normaliser::default();
    let (h, w) = hu.dim();
    let (ph, pw) = (h.div_ceil(4) * 4, w.div_ceil(4) * 4);
    let refl = |i: usize, n: usize| {
        let p = 2 * (n - 1);
        let j = i % p;
        if j < n {
            j
        } else {
            p - j
        }
    };
    let padded = Array2::from_shape_fn((ph, pw), |(y, x)| {
        norm.forward(hu[[refl(y, h), refl(x, w)]])
    });
    let out = smoothing_reference(&padded);
    Array2::from_shape_fn((h, w), |(y, x)| {
        let v = hu[[y, x]];
        let t = outside_window_weight(v);
        t * norm.inverse(out[[y, x]]) + (1.0 - t) * v
    })
}

/// The documented pass-through for a [-1000, 1000] HU window without an explicit
/// `outside_window` (serve/README.md): weight 0 at or below -1500 HU, smoothstep to 1 at
/// -1300 HU, 1 up to 800 HU, smoothstep to 0 at 1000 HU, 0 above. Written out here,
/// not taken from the contract.
fn outside_window_weight(v: f32) -> f32 {
    let s = |t: f32| {
        let t = t.clamp(0.0, 1.0);
        t * t * (3.0 - 2.0 * t)
    };
    if v <= -1500.0 || v >= 1000.0 {
        0.0
    } else if v < -1300.0 {
        s((v + 1500.0) / 200.0)
    } else if v <= 800.0 {
        1.0
    } else {
        1.0 - s((v - 800.0) / 200.0)
    }
}

#[actix_web::test]
async fn npy_round_trip_matches_the_network_formula() {
    let models = tiny_models();
    let svc = test::init_service(app(state(models.path(), Options::default()))).await;
    let hu = phantom(61, 77);
    let req = TestRequest::post()
        .uri("/v1/denoise?model=tiny")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&hu))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert_eq!(h.get("x-ldct-model").unwrap(), "tiny");
    assert_eq!(h.get("x-ldct-model-version").unwrap(), "0.1.0");
    assert_eq!(h.get("x-ldct-device").unwrap(), "cpu");
    assert!(h.get("x-ldct-noise-in-hu").is_some());
    assert!(h.get("x-ldct-noise-out-hu").is_some());
    assert_eq!(h.get("content-type").unwrap(), "application/x-npy");
    let body = test::read_body(res).await;
    let out = ldct_imaging::npy::parse(&body).unwrap();
    assert_eq!(out.shape, vec![61, 77]);
    let want = expected_hu(&hu);
    let max = out
        .data
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 0.05, "max |server - reference| = {max} HU");

    // int16 input is accepted too.
    let hu16: Vec<i16> = hu.iter().map(|&v| v.round() as i16).collect();
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(ldct_imaging::npy::encode_i16(&[61, 77], &hu16).unwrap())
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);
}

#[actix_web::test]
async fn bad_inputs_get_the_right_4xx_and_json_errors() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            max_body_bytes: 64 * 1024,
            ..Options::default()
        },
    )))
    .await;
    let good = npy(&phantom(16, 16));
    let mut nan = phantom(16, 16);
    nan[[3, 3]] = f32::NAN;
    let cube = ldct_imaging::npy::encode_f32(&[2, 4, 4], &[0.0; 32]).unwrap();
    let f64npy = {
        // '<f8' is a valid .npy dtype but not one the API takes.
        let mut b = ldct_imaging::npy::encode_f32(&[2, 2], &[0.0; 4]).unwrap();
        let pos = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[pos + 2] = b'8';
        b.extend_from_slice(&[0u8; 16]);
        b
    };
    let big = vec![0u8; 100 * 1024];
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/denoise",
            "application/x-npy",
            Vec::new(),
            400,
            "empty_body",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            b"not numpy".to_vec(),
            400,
            "invalid_npy",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            good[..good.len() - 10].to_vec(),
            400,
            "invalid_npy",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            cube,
            422,
            "unsupported_shape",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            f64npy,
            422,
            "unsupported_dtype",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            npy(&nan),
            422,
            "non_finite",
        ),
        (
            "/v1/denoise",
            "application/dicom",
            b"DICM but not really".to_vec(),
            400,
            "invalid_dicom",
        ),
        (
            "/v1/denoise",
            "text/plain",
            good.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/denoise?model=nope",
            "application/x-npy",
            good.clone(),
            404,
            "unknown_model",
        ),
        (
            "/v1/denoise",
            "application/x-npy",
            big,
            413,
            "payload_too_large",
        ),
        (
            "/nowhere",
            "application/x-npy",
            good.clone(),
            404,
            "not_found",
        ),
    ];
    for (uri, ct, body, status, code) in cases {
        let req = TestRequest::post()
            .uri(uri)
            .insert_header(("content-type", ct))
            .set_payload(body)
            .to_request();
        let res = test::call_service(&svc, req).await;
        assert_eq!(res.status().as_u16(), status, "{uri} {ct} {code}");
        let v = json_body(res).await;
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let res = test::call_service(&svc, TestRequest::get().uri("/v1/denoise").to_request()).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Still serving.
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(good)
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);
}

#[actix_web::test]
async fn bearer_token_guards_everything_but_health_and_metrics() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            token: Some("s3cret"),
            ..Options::default()
        },
    )))
    .await;
    for uri in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        let res = test::call_service(&svc, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
    }
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic s3cret"),
        Some("Bearer s3cret2"),
    ] {
        let mut req = TestRequest::get().uri("/v1/models");
        if let Some(a) = auth {
            req = req.insert_header(("authorization", a));
        }
        let res = test::call_service(&svc, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(res.headers().contains_key("www-authenticate"));
        assert_eq!(json_body(res).await["error"]["code"], "unauthorized");
    }
    let req = TestRequest::get()
        .uri("/v1/models")
        .insert_header(("authorization", "Bearer s3cret"))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_body(res).await;
    assert_eq!(v["models"][0]["name"], "tiny");
    assert_eq!(v["models"][0]["device"], "cpu");
}

#[actix_web::test]
async fn every_response_carries_a_request_id_the_callers_when_it_is_plain() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            token: Some("s3cret"),
            ..Options::default()
        },
    )))
    .await;
    let id_of = |res: &actix_web::dev::ServiceResponse| {
        res.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // Made here: distinct per request, on successes, errors and refusals alike.
    let mut seen = std::collections::HashSet::new();
    for (uri, status) in [
        ("/v2/health/live", StatusCode::OK),
        ("/v1/models", StatusCode::UNAUTHORIZED),
        ("/no/such/route", StatusCode::UNAUTHORIZED),
    ] {
        let res = test::call_service(&svc, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(res.status(), status, "{uri}");
        let id = id_of(&res).unwrap_or_else(|| panic!("{uri}: no x-request-id"));
        assert!(seen.insert(id), "{uri}: a repeated request id");
    }
    let res = test::call_service(
        &svc,
        TestRequest::get()
            .uri("/no/such/route")
            .insert_header(("authorization", "Bearer s3cret"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(id_of(&res).is_some());
    // The caller's id is kept when it is a plain token, replaced when it is not.
    for (given, kept) in [
        ("trace-42.a:b_c", true),
        ("has space", false),
        ("a;b=\"c\"", false),
        (&*"x".repeat(65), false),
    ] {
        let req = TestRequest::get()
            .uri("/v2/health/ready")
            .insert_header(("x-request-id", given))
            .to_request();
        let res = test::call_service(&svc, req).await;
        let id = id_of(&res).unwrap();
        assert_eq!(id == given, kept, "{given:?} -> {id:?}");
    }
}

#[actix_web::test]
async fn open_inference_protocol_json_and_binary() {
    let models = tiny_models();
    let svc = test::init_service(app(state(models.path(), Options::default()))).await;
    let res = test::call_service(&svc, TestRequest::get().uri("/v2").to_request()).await;
    assert_eq!(json_body(res).await["extensions"][0], "binary_tensor_data");
    let res =
        test::call_service(&svc, TestRequest::get().uri("/v2/models/tiny").to_request()).await;
    let meta = json_body(res).await;
    assert_eq!(meta["versions"][0], "0.1.0");
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert_eq!(meta["parameters"]["device"], "cpu");
    for (uri, status) in [
        ("/v2/models/tiny/ready", 200),
        ("/v2/models/tiny/versions/0.1.0/ready", 200),
        ("/v2/models/tiny/versions/9.9.9/ready", 404),
        ("/v2/models/other/ready", 404),
        ("/v2/models/tiny/versions/0.1.0", 200),
    ] {
        let res = test::call_service(&svc, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(res.status().as_u16(), status, "{uri}");
    }

    // Two 6x5 slices, normalised, as JSON.
    let x: Vec<f32> = (0..60)
        .map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5)
        .collect();
    let req = TestRequest::post()
        .uri("/v2/models/tiny/infer")
        .set_json(json!({
            "id": "42",
            "inputs": [{"name": "input", "shape": [2, 1, 6, 5], "datatype": "FP32", "data": x}],
            "outputs": [{"name": "output"}]
        }))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_body(res).await;
    assert_eq!(v["id"], "42");
    assert_eq!(v["model_name"], "tiny");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 1, 6, 5]));
    let y: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for s in 0..2 {
        let img = Array2::from_shape_vec((6, 5), x[s * 30..(s + 1) * 30].to_vec()).unwrap();
        // Reference on the reflect-padded 8x8 input, cropped back.
        let (h, w) = (6usize, 5usize);
        let refl = |i: usize, n: usize| {
            let p = 2 * (n - 1);
            let j = i % p;
            if j < n {
                j
            } else {
                p - j
            }
        };
        let padded = Array2::from_shape_fn((8, 8), |(a, b)| img[[refl(a, h), refl(b, w)]]);
        let want = smoothing_reference(&padded);
        for yy in 0..h {
            for xx in 0..w {
                let got = y[s * 30 + yy * w + xx];
                assert!(
                    (got - want[[yy, xx]]).abs() < 1e-5,
                    "{got} vs {}",
                    want[[yy, xx]]
                );
            }
        }
    }

    // The same as binary, output binary too.
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [2, 1, 6, 5], "datatype": "FP32",
                    "parameters": {"binary_data_size": 240}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
    }))
    .unwrap();
    let mut body = header.clone();
    x.iter()
        .for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    let req = TestRequest::post()
        .uri("/v2/models/tiny/versions/0.1.0/infer")
        .insert_header(("inference-header-content-length", header.len().to_string()))
        .set_payload(body)
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let n: usize = res
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = test::read_body(res).await;
    let v: Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 240);
    let yb: Vec<f32> = body[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(yb.len(), 60);
    for (a, b) in yb.iter().zip(&y) {
        assert!((a - b).abs() < 1e-6);
    }

    // A wrong datatype is a 400 with the JSON error.
    let req = TestRequest::post()
        .uri("/v2/models/tiny/infer")
        .set_json(json!({"inputs": [{"name": "input", "shape": [1, 1, 1, 1], "datatype": "INT8", "data": [1]}]}))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.headers().get("x-ldct-error-code").unwrap(),
        "invalid_tensor"
    );
    assert!(json_body(res).await["error"].is_string());
}

/// The Open Inference Protocol's error body is `{"error": "<message>"}` on every
/// route of its scope (the code in `x-ldct-error-code`); ldct's own routes keep
/// `{"error": {"code", "message", "type", "link"}}`.
#[actix_web::test]
async fn oip_errors_are_protocol_strings() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            token: Some("s3cret"),
            ..Options::default()
        },
    )))
    .await;
    let auth = ("authorization", "Bearer s3cret");
    let zeros = vec![0.0f32; 16];
    let infer = json!({"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": zeros}]});
    let cases = [
        (
            TestRequest::post()
                .uri("/v2/models/nope/infer")
                .insert_header(auth)
                .set_json(&infer),
            404,
            "unknown_model",
        ),
        (
            TestRequest::get()
                .uri("/v2/models/tiny/versions/9/ready")
                .insert_header(auth),
            404,
            "unknown_model",
        ),
        (
            TestRequest::get()
                .uri("/v2/models/tiny/infer")
                .insert_header(auth),
            405,
            "method_not_allowed",
        ),
        (
            TestRequest::post()
                .uri("/v2/models/tiny/infer")
                .insert_header(auth)
                .set_payload("{"),
            400,
            "bad_request",
        ),
        (
            TestRequest::post()
                .uri("/v2/models/tiny/infer")
                .set_json(&infer),
            401,
            "unauthorized",
        ),
        (
            TestRequest::get()
                .uri("/v2/nothing/here")
                .insert_header(auth),
            404,
            "not_found",
        ),
    ];
    for (req, status, code) in cases {
        let res = test::call_service(&svc, req.to_request()).await;
        assert_eq!(res.status().as_u16(), status, "{code}");
        assert_eq!(res.headers().get("x-ldct-error-code").unwrap(), code);
        let v = json_body(res).await;
        let message = v["error"].as_str().unwrap_or_else(|| panic!("{code}: {v}"));
        assert!(
            !message.is_empty() && v.as_object().unwrap().len() == 1,
            "{v}"
        );
    }
    let req = TestRequest::post()
        .uri("/v1/denoise?model=nope")
        .insert_header(auth)
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(8, 8)));
    let v = json_body(test::call_service(&svc, req.to_request()).await).await;
    assert_eq!(v["error"]["code"], "unknown_model");
    assert_eq!(v["error"]["type"], "not_found");
    assert!(v["error"]["link"]
        .as_str()
        .unwrap()
        .ends_with("#unknown_model"));
}

/// A model that takes 5x5 and more (`min_size` 5, spatial multiple 1: RED-CNN's
/// shape) serves a 3x3 slice: padded by reflection to 5x5, run, cropped back. The
/// reference is the OIP route on the 5x5 reflect-padded input, cropped.
#[actix_web::test]
async fn a_model_with_a_minimum_size_serves_slices_smaller_than_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_model_dir_sized(
        &tmp.path().join("sg"),
        "sg",
        "1",
        &shrink_grow_model(),
        1,
        Some(5),
    );
    let svc = test::init_service(app(state(tmp.path(), Options::default()))).await;
    let hu = Array2::from_shape_fn((3, 3), |(y, x)| -200.0 + 90.0 * (3 * y + x) as f32);
    let req = TestRequest::post()
        .uri("/v1/denoise?model=sg")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&hu))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let out = ldct_imaging::npy::parse(&test::read_body(res).await)
        .unwrap()
        .into_image()
        .unwrap();
    assert_eq!(out.dim(), (3, 3));

    // np.pad(x, ((0, 2), (0, 2)), mode="reflect") of the normalised slice.
    let norm = Normaliser::default();
    let src = [0usize, 1, 2, 1, 0];
    let padded: Vec<f32> = (0..25)
        .map(|i| norm.forward(hu[[src[i / 5], src[i % 5]]]))
        .collect();
    let req = TestRequest::post()
        .uri("/v2/models/sg/infer")
        .set_json(json!({"inputs": [{"name": "input", "shape": [1, 1, 5, 5], "datatype": "FP32", "data": padded}]}))
        .to_request();
    let v = json_body(test::call_service(&svc, req).await).await;
    let y: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for r in 0..3 {
        for c in 0..3 {
            let want = norm.inverse(y[r * 5 + c]);
            assert!(
                (out[[r, c]] - want).abs() < 1e-3,
                "{} vs {want}",
                out[[r, c]]
            );
        }
    }
    // The model's own sizes are reported.
    let v = json_body(
        test::call_service(&svc, TestRequest::get().uri("/v1/models").to_request()).await,
    )
    .await;
    assert_eq!(v["models"][0]["min_size"], 5);
}

#[actix_web::test]
async fn reload_swaps_good_models_and_keeps_serving_when_a_new_one_is_broken() {
    let models = tiny_models();
    let state = state(models.path(), Options::default());
    let svc = test::init_service(app(state.clone())).await;
    let before = state.registry.get(Some("tiny")).unwrap();

    // A broken model folder (checksum right, ONNX garbage) and a tampered update of tiny.
    write_model_dir(
        &models.path().join("broken"),
        "broken",
        "1.0.0",
        b"not onnx",
        4,
    );
    let tiny_dir = models.path().join("tiny");
    std::fs::write(tiny_dir.join("model.onnx"), b"garbage after export").unwrap();
    let res = test::call_service(
        &svc,
        TestRequest::post().uri("/v1/models/reload").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report = json_body(res).await;
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{report}");
    assert!(
        rejected.iter().any(|r| r["kept"]["name"] == "tiny"),
        "{report}"
    );
    assert_eq!(
        report["models"],
        json!([{"name": "tiny", "version": "0.1.0"}])
    );
    let after = state.registry.get(Some("tiny")).unwrap();
    assert_eq!(after.id, before.id, "the old tiny keeps serving");
    let req = TestRequest::post()
        .uri("/v1/denoise?model=tiny")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(8, 8)))
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);

    // A good new version replaces it; the broken folder goes away.
    std::fs::remove_dir_all(models.path().join("broken")).unwrap();
    write_model_dir(&tiny_dir, "tiny", "0.2.0", &smoothing_model(), 8);
    let res = test::call_service(
        &svc,
        TestRequest::post().uri("/v1/models/reload").to_request(),
    )
    .await;
    let report = json_body(res).await;
    assert_eq!(
        report["loaded"],
        json!([{"name": "tiny", "version": "0.2.0"}]),
        "{report}"
    );
    assert_eq!(state.registry.get(Some("tiny")).unwrap().version(), "0.2.0");
    // The old model object is still usable by whoever holds it (in-flight requests).
    assert!(before.run(0, ndarray::Array4::zeros((1, 1, 4, 4))).is_ok());

    // Unchanged on a second reload.
    let res = test::call_service(
        &svc,
        TestRequest::post().uri("/v1/models/reload").to_request(),
    )
    .await;
    let report = json_body(res).await;
    assert_eq!(
        report["unchanged"],
        json!([{"name": "tiny", "version": "0.2.0"}]),
        "{report}"
    );
}

#[actix_web::test]
async fn no_models_means_not_ready_and_unknown_model() {
    let empty = tempfile::tempdir().unwrap();
    let svc = test::init_service(app(state(
        &empty.path().join("missing"),
        Options::default(),
    )))
    .await;
    let res =
        test::call_service(&svc, TestRequest::get().uri("/v2/health/live").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = test::call_service(
        &svc,
        TestRequest::get().uri("/v2/health/ready").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_body(res).await["ready"], false);
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(8, 8)))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_body(res).await["error"]["code"], "unknown_model");
}

#[actix_web::test]
async fn evaluate_reports_quality_in_both_windows() {
    let models = tiny_models();
    let svc = test::init_service(app(state(models.path(), Options::default()))).await;
    let reference = phantom(32, 32);
    let noisy = Array2::from_shape_fn((32, 32), |(y, x)| {
        reference[[y, x]] + 25.0 * ((((y * 7919 + x * 104_729) % 97) as f32 / 97.0) - 0.5)
    });
    let boundary = "XyZbOuNdArY";
    let mut body = Vec::new();
    for (name, img) in [("input", &noisy), ("reference", &reference)] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.npy\"\r\nContent-Type: application/x-npy\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&npy(img));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let req = TestRequest::post()
        .uri("/v1/evaluate?model=tiny")
        .insert_header((
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        ))
        .set_payload(body)
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_body(res).await;
    assert_eq!(v["windows"][0]["window"], json!([-1000.0, 1000.0]));
    assert_eq!(v["windows"][1]["window"], json!([-160.0, 240.0]));
    for w in 0..2 {
        for k in ["input", "output"] {
            let q = &v["windows"][w][k];
            assert!(q["psnr"].as_f64().unwrap() > 0.0, "{v}");
            assert!(q["ssim"].as_f64().unwrap() <= 1.0);
            assert!(q["rmse_hu"].as_f64().unwrap() >= 0.0);
        }
    }
    let req = TestRequest::post()
        .uri("/v1/evaluate")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&reference))
        .to_request();
    assert_eq!(
        test::call_service(&svc, req).await.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[actix_web::test]
async fn a_request_that_waits_too_long_gets_504() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            timeout: Duration::from_nanos(1),
            ..Options::default()
        },
    )))
    .await;
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(256, 256)))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json_body(res).await["error"]["code"], "timeout");
}

#[actix_web::test]
async fn metrics_count_requests_and_errors() {
    let models = tiny_models();
    let svc = test::init_service(app(state(models.path(), Options::default()))).await;
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(64, 64)))
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);
    let req = TestRequest::post()
        .uri("/v1/denoise")
        .insert_header(("content-type", "text/csv"))
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status().as_u16(), 415);
    let res = test::call_service(&svc, TestRequest::get().uri("/metrics").to_request()).await;
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    assert!(
        text.contains(
            "ldct_http_requests_total{method=\"POST\",route=\"/v1/denoise\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("ldct_errors_total{kind=\"unsupported_media_type\"}"),
        "{text}"
    );
    // (ldct_model_info is process-wide and other tests here load other model sets
    // concurrently: the Python tests check it against the real binary.)
    assert!(text.contains("ldct_batch_size_bucket"));
    assert!(text.contains("ldct_noise_in_hu_bucket"));
}

/// A response header as text ("" when absent).
fn header(h: &actix_web::http::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[actix_web::test]
async fn the_web_page_is_served_open_with_a_strict_policy_while_the_api_keeps_its_token() {
    let models = tiny_models();
    let svc = test::init_service(app(state(
        models.path(),
        Options {
            token: Some("s3cret"),
            ..Options::default()
        },
    )))
    .await;
    // / and /ui redirect (relatively, so a proxy's path prefix is kept) to the page.
    for uri in ["/", "/ui"] {
        let res = test::call_service(&svc, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(header(res.headers(), "location"), "ui/", "{uri}");
    }
    let files = [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/viewer.js", "text/javascript; charset=utf-8"),
        ("/ui/api.js", "text/javascript; charset=utf-8"),
        ("/ui/dicom.js", "text/javascript; charset=utf-8"),
        ("/ui/npy.js", "text/javascript; charset=utf-8"),
        ("/ui/zip.js", "text/javascript; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ];
    for (uri, ctype) in files {
        let res = test::call_service(&svc, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
        let h = res.headers().clone();
        assert_eq!(header(&h, "content-type"), ctype, "{uri}");
        let csp = header(&h, "content-security-policy");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
        assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        assert_eq!(header(&h, "x-frame-options"), "DENY");
        assert_eq!(header(&h, "referrer-policy"), "no-referrer");
        assert_eq!(header(&h, "cache-control"), "no-cache");
        let etag = header(&h, "etag");
        assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
        assert!(!test::read_body(res).await.is_empty(), "{uri}");
        // Revalidation: 304 without a body.
        let req = TestRequest::get()
            .uri(uri)
            .insert_header(("if-none-match", etag.as_str()))
            .to_request();
        let res = test::call_service(&svc, req).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{uri}");
        assert!(test::read_body(res).await.is_empty());
    }
    let page = test::call_service(&svc, TestRequest::get().uri("/ui/").to_request()).await;
    let html = String::from_utf8(test::read_body(page).await.to_vec()).unwrap();
    assert!(html.contains("<script type=\"module\" src=\"app.js\"></script>"));
    // The API behind the page still needs the token.
    let res = test::call_service(&svc, TestRequest::get().uri("/v1/models").to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let req = TestRequest::get()
        .uri("/v1/models")
        .insert_header(("authorization", "Bearer s3cret"))
        .to_request();
    let v = json_body(test::call_service(&svc, req).await).await;
    assert_eq!(v["strength"], 1.0);
    // Unknown files and other methods: the API's JSON errors.
    let res = test::call_service(&svc, TestRequest::get().uri("/ui/secret.js").to_request()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_body(res).await["error"]["code"], "not_found");
    let res = test::call_service(&svc, TestRequest::get().uri("/ui/a/b.js").to_request()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = test::call_service(&svc, TestRequest::post().uri("/ui/").to_request()).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json_body(res).await["error"]["code"], "method_not_allowed");
}
