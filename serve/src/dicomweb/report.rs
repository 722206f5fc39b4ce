//! The PS3.18 Store Instances Response of a STOW-RS request, in the DICOM JSON model
//! (`application/dicom+json`):
//!
//! - Referenced SOP Sequence (0008,1199): the received instances that were accepted,
//!   each with its Retrieve URL (0008,1190) — where the *derived* instance will be on
//!   the PACS — and, in the private block `ldct` (0009,0010), the derived SOP Instance
//!   UID (0009,1002) and Series Instance UID (0009,1003);
//! - Failed SOP Sequence (0008,1198): the others, with Failure Reason (0008,1197) and a
//!   human-readable reason (0009,1001).
//!
//! Status: 200 all accepted; 202 some; 409 none; 503 (with `Retry-After`) none, all for
//! lack of resources (spool or inference queue full).

use actix_web::http::StatusCode;
use serde_json::{json, Map, Value};

use super::client::PacsConfig;
use super::process::{Accepted, Rejected};

pub const DICOM_JSON: &str = "application/dicom+json";
/// Private creator of ldct's attributes in group 0009.
pub const PRIVATE_CREATOR: &str = "ldct";

/// The outcome of a STOW-RS request, instance by instance.
#[derive(Debug, Default)]
pub struct StowReport {
    pub accepted: Vec<Accepted>,
    pub failed: Vec<Rejected>,
}

fn attr(vr: &str, value: Value) -> Value {
    json!({"vr": vr, "Value": [value]})
}

fn private_creator(item: &mut Map<String, Value>) {
    item.insert("00090010".into(), attr("LO", json!(PRIVATE_CREATOR)));
}

impl StowReport {
    /// 200 all accepted, 202 some, 409 none, 503 none and all for lack of resources.
    pub fn status(&self) -> StatusCode {
        match (self.accepted.is_empty(), self.failed.is_empty()) {
            (false, true) => StatusCode::OK,
            (false, false) => StatusCode::ACCEPTED,
            (true, _)
                if !self.failed.is_empty()
                    && self.failed.iter().all(|f| f.reason.is_transient()) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            (true, _) => StatusCode::CONFLICT,
        }
    }

    /// The Store Instances Response data set in the DICOM JSON model.
    pub fn to_json(&self, pacs: Option<&PacsConfig>) -> Value {
        let mut root = Map::new();
        let studies: std::collections::BTreeSet<&str> = self
            .accepted
            .iter()
            .filter_map(|a| a.study_instance_uid.as_deref())
            .collect();
        if let (Some(p), [study]) = (pacs, studies.iter().collect::<Vec<_>>().as_slice()) {
            root.insert("00081190".into(), attr("UR", json!(p.study_url(study))));
        }
        if !self.failed.is_empty() {
            let items: Vec<Value> = self
                .failed
                .iter()
                .map(|f| {
                    let mut item = Map::new();
                    if let Some(c) = &f.sop_class_uid {
                        item.insert("00081150".into(), attr("UI", json!(c)));
                    }
                    if let Some(s) = &f.sop_instance_uid {
                        item.insert("00081155".into(), attr("UI", json!(s)));
                    }
                    item.insert("00081197".into(), attr("US", json!(f.reason.code())));
                    private_creator(&mut item);
                    item.insert("00091001".into(), attr("LT", json!(f.message)));
                    Value::Object(item)
                })
                .collect();
            root.insert("00081198".into(), json!({"vr": "SQ", "Value": items}));
        }
        if !self.accepted.is_empty() {
            let items: Vec<Value> = self
                .accepted
                .iter()
                .map(|a| {
                    let mut item = Map::new();
                    item.insert("00081150".into(), attr("UI", json!(a.sop_class_uid)));
                    item.insert(
                        "00081155".into(),
                        attr("UI", json!(a.source_sop_instance_uid)),
                    );
                    if let (Some(p), Some(study)) = (pacs, &a.study_instance_uid) {
                        item.insert(
                            "00081190".into(),
                            attr(
                                "UR",
                                json!(p.instance_url(
                                    study,
                                    &a.series_instance_uid,
                                    &a.sop_instance_uid
                                )),
                            ),
                        );
                    }
                    private_creator(&mut item);
                    item.insert("00091002".into(), attr("UI", json!(a.sop_instance_uid)));
                    item.insert("00091003".into(), attr("UI", json!(a.series_instance_uid)));
                    Value::Object(item)
                })
                .collect();
            root.insert("00081199".into(), json!({"vr": "SQ", "Value": items}));
        }
        Value::Object(root)
    }
}
