//! Loading models: the warmup before a model is published, one model folder as the
//! models root, and the `--model-name` alias (how KServe runs the server).

mod common;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use common::*;
use ldct_proto::contract::Padding;
use ldct_serve::http::app;
use ldct_serve::inference::device::SessionFactory;
use ldct_serve::inference::registry::Registry;
use ldct_serve::inference::warmup::{Shape, Warmup};
use ldct_serve::metrics::metrics;

fn registry(root: &std::path::Path, sessions: usize) -> Registry {
    Registry::new(root.to_path_buf(), SessionFactory::cpu(1), sessions)
}

fn warmup_count(model: &str) -> u64 {
    metrics()
        .warmup_duration
        .with_label_values(&[model])
        .get_sample_count()
}

#[test]
fn the_warmup_runs_each_padded_side_at_the_largest_batch_and_batch_one_on_every_session() {
    let tmp = tempfile::tempdir().unwrap();
    write_model_dir(
        &tmp.path().join("m"),
        "warm-tiny",
        "0.1.0",
        &smoothing_model(),
        16,
    );
    let warmup = Warmup {
        sides: vec![100, 40],
        max_batch: 3,
        max_batch_pixels: 2 * 112 * 112,
    };
    let before = warmup_count("warm-tiny");
    let reg = registry(tmp.path(), 2).with_warmup(warmup.clone());
    let report = reg.reload();
    assert!(report.rejected.is_empty(), "{report:?}");
    let m = reg.get(Some("warm-tiny")).unwrap();
    let w = m.warmup.as_ref().expect("the model was warmed up");
    let shape = |batch, side| Shape { batch, side };
    // 100 pads to 112: two slices fit the pixel budget; 40 pads to 48: --max-batch 3.
    // The first size's single slice runs last (the shape a lone request has).
    assert_eq!(
        w.shapes,
        vec![shape(2, 112), shape(3, 48), shape(1, 48), shape(1, 112)]
    );
    assert_eq!(w.shapes, warmup.plan(&Padding::new(16, 1)));
    assert_eq!(w.sessions, 2);
    assert_eq!(warmup_count("warm-tiny"), before + 1);

    // An unchanged model is not warmed up again on reload.
    reg.reload();
    assert_eq!(warmup_count("warm-tiny"), before + 1);
}

#[test]
fn a_model_that_cannot_run_the_batchers_batch_is_rejected_at_load_not_on_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    write_model_dir(
        &tmp.path().join("b1"),
        "b1",
        "0.1.0",
        &batch_of_one_model(),
        1,
    );
    // The smoke test alone (batch 1) lets it through.
    let plain = registry(tmp.path(), 1);
    assert!(plain.reload().rejected.is_empty());
    assert!(plain.get(Some("b1")).unwrap().warmup.is_none());

    let warm = registry(tmp.path(), 1).with_warmup(Warmup {
        sides: vec![64],
        max_batch: 4,
        max_batch_pixels: usize::MAX,
    });
    let report = warm.reload();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let error = &report.rejected[0].error;
    assert!(error.contains("warmup 4x1x64x64"), "{error}");
    assert!(error.contains("shape"), "{error}");
    assert!(warm.is_empty());
}

#[actix_web::test]
async fn one_model_folder_is_served_under_the_alias_and_only_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    // KServe mounts the model folder itself at /mnt/models.
    let root = tmp.path().join("mnt-models");
    write_model_dir(&root, "tiny", "0.1.0", &smoothing_model(), 4);

    // Without an alias the folder is served under its manifest's name.
    let plain = registry(&root, 1);
    assert_eq!(plain.reload().models.len(), 1);
    assert!(plain.get(Some("tiny")).is_ok());

    let reg = registry(&root, 1).with_alias(Some("ct-denoiser".into()));
    let report = reg.reload();
    assert_eq!(report.models.len(), 1, "{report:?}");
    assert_eq!(report.models[0].name, "ct-denoiser");
    assert!(reg.get(Some("tiny")).is_err());

    let mut state = state(&tmp.path().join("unused"), Options::default());
    state.registry = Arc::new(reg);
    let svc = test::init_service(app(state)).await;
    let res = test::call_service(
        &svc,
        TestRequest::get()
            .uri("/v2/models/ct-denoiser")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_body(res).await;
    assert_eq!(v["name"], "ct-denoiser", "{v}");
    let res =
        test::call_service(&svc, TestRequest::get().uri("/v2/models/tiny").to_request()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let req = TestRequest::post()
        .uri("/v1/denoise?model=ct-denoiser")
        .insert_header(("content-type", "application/x-npy"))
        .set_payload(npy(&phantom(8, 8)))
        .to_request();
    let res = test::call_service(&svc, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("x-ldct-model").unwrap().to_str().unwrap(),
        "ct-denoiser"
    );
}

#[test]
fn an_alias_over_several_model_folders_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        write_model_dir(&tmp.path().join(name), name, "0.1.0", &smoothing_model(), 4);
    }
    let reg = registry(tmp.path(), 1).with_alias(Some("ct-denoiser".into()));
    let report = reg.reload();
    assert!(report.models.is_empty(), "{report:?}");
    assert_eq!(report.rejected.len(), 2);
    assert!(
        report.rejected[0].error.contains("serves one model"),
        "{report:?}"
    );
}

#[actix_web::test]
async fn versions_side_by_side_follow_the_policy_and_the_repository_api_works_by_name() {
    use ldct_serve::config::VersionPolicy;
    use serde_json::json;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_model_dir(&root.join("tiny/1"), "tiny", "0.1.0", &smoothing_model(), 4);
    write_model_dir(
        &root.join("tiny/2"),
        "tiny",
        "0.10.0",
        &smoothing_model(),
        4,
    );
    write_model_dir(&root.join("other"), "other", "1.0.0", &smoothing_model(), 4);

    // latest:1 (the default): the higher version only.
    let latest = registry(root, 1);
    latest.reload();
    assert_eq!(latest.get(Some("tiny")).unwrap().version(), "0.10.0");
    assert!(latest.get_version("tiny", Some("0.1.0")).is_err());
    let index = latest.index();
    let entry = |name: &str, version: &str| {
        index
            .iter()
            .find(|e| e.name == name && e.version == version)
            .cloned()
            .unwrap_or_else(|| panic!("{name} {version} not in {index:?}"))
    };
    assert_eq!(entry("tiny", "0.10.0").state, "READY");
    assert_eq!(entry("tiny", "0.1.0").state, "UNAVAILABLE");
    assert!(entry("tiny", "0.1.0").reason.contains("version-policy"));
    assert_eq!(entry("other", "1.0.0").state, "READY");

    // all: both, the higher one by default.
    let reg = Arc::new(registry(root, 1).with_version_policy(VersionPolicy::All));
    reg.reload();
    assert_eq!(reg.get(Some("tiny")).unwrap().version(), "0.10.0");
    assert_eq!(
        reg.get_version("tiny", Some("0.1.0")).unwrap().version(),
        "0.1.0"
    );
    let other = reg.get(Some("other")).unwrap();

    let mut st = state(&root.join("unused"), Options::default());
    st.registry = reg.clone();
    let svc = test::init_service(app(st)).await;
    let post = |uri: &str| TestRequest::post().uri(uri).to_request();
    let res = test::call_service(&svc, post("/v2/models/tiny/versions/0.1.0/infer")).await;
    // (no body: a 400 from the infer route, which found the version)
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v = json_body(
        test::call_service(&svc, TestRequest::get().uri("/v2/models/tiny").to_request()).await,
    )
    .await;
    assert_eq!(v["versions"], json!(["0.1.0", "0.10.0"]), "{v}");

    // Unload: every version of tiny goes, other stays the same object.
    let res = test::call_service(&svc, post("/v2/repository/models/tiny/unload")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(reg.get(Some("tiny")).is_err());
    assert!(Arc::ptr_eq(&reg.get(Some("other")).unwrap(), &other));
    let v = json_body(test::call_service(&svc, post("/v2/repository/index")).await).await;
    let states: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["version"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("other".into(), "1.0.0".into(), "READY".into()),
            ("tiny".into(), "0.1.0".into(), "UNAVAILABLE".into()),
            ("tiny".into(), "0.10.0".into(), "UNAVAILABLE".into()),
        ]
    );
    let req = TestRequest::post()
        .uri("/v2/repository/index")
        .set_payload(r#"{"ready": true}"#)
        .to_request();
    let v = json_body(test::call_service(&svc, req).await).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // A reload keeps it unloaded.
    reg.reload();
    assert!(reg.get(Some("tiny")).is_err());

    // A load touches its own model only: other's change on disk waits for a reload.
    write_model_dir(&root.join("other"), "other", "1.1.0", &smoothing_model(), 4);
    let res = test::call_service(&svc, post("/v2/repository/models/tiny/load")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(reg.get(Some("tiny")).unwrap().version(), "0.10.0");
    assert_eq!(reg.get(Some("other")).unwrap().version(), "1.0.0");
    reg.reload();
    assert_eq!(reg.get(Some("other")).unwrap().version(), "1.1.0");

    // Unknown names: 404 in the protocol's error form.
    for uri in [
        "/v2/repository/models/nope/load",
        "/v2/repository/models/nope/unload",
    ] {
        let res = test::call_service(&svc, post(uri)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{uri}");
        let v = json_body(res).await;
        assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    }
    // A model whose folder fails to load: 400 naming the cause.
    std::fs::write(root.join("tiny/2/model.onnx"), b"not onnx any more").unwrap();
    std::fs::remove_dir_all(root.join("tiny/1")).unwrap();
    reg.unload("tiny").unwrap();
    let res = test::call_service(&svc, post("/v2/repository/models/tiny/load")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v = json_body(res).await;
    assert!(
        v["error"].as_str().unwrap().contains("failed to load"),
        "{v}"
    );
}
