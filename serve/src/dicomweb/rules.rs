//! Series rules: which received instances are denoised, which are passed through to the
//! PACS unchanged, and which are refused (`--rule-localizer`, `--rule-non-axial`,
//! `--rule-thickness-mm` with `--rule-thickness-action`).
//!
//! The defaults match what a CT reading room expects of a denoising node: axial image
//! slices are denoised; localizers (scouts: Image Type `LOCALIZER`) and non-axial images
//! (reformats whose normal is more than 45 degrees from the patient's z axis; gantry
//! tilts stay axial) are passed through unchanged, so a study routed through ldct
//! arrives complete and only its axial series gets a denoised twin; slice thickness is
//! not restricted. Instances ldct made are always refused (the loop guard of
//! [`super::process::decode_part`]). A pull job skips what a rule does not denoise (the
//! instance is already on the PACS).

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

/// What a rule does with a matching instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Denoise,
    /// Forwarded to the PACS unchanged (same UIDs).
    Pass,
    /// Refused (STOW-RS Failure Reason 0110, C-STORE status 0110), with the rule named.
    Refuse,
}

/// The verdict on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Denoise,
    Pass(String),
    Refuse(String),
}

/// The configured rules.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRules {
    pub localizer: Action,
    pub non_axial: Action,
    /// Denoised slice thickness range in mm (inclusive); `None`: any.
    pub thickness_mm: Option<(f64, f64)>,
    pub thickness_action: Action,
}

impl Default for SeriesRules {
    fn default() -> Self {
        Self {
            localizer: Action::Pass,
            non_axial: Action::Pass,
            thickness_mm: None,
            thickness_action: Action::Pass,
        }
    }
}

/// Largest angle (degrees) between an image's normal and the patient's z axis for it to
/// count as axial.
pub const MAX_AXIAL_TILT_DEG: f64 = 45.0;

/// `MIN-MAX` in mm (e.g. `0.5-5`).
pub fn parse_thickness(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("{s:?} is not MIN-MAX in mm (e.g. 0.5-5)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a.is_finite() && b.is_finite() && a >= 0.0 && a <= b {
        Ok((a, b))
    } else {
        Err(bad())
    }
}

fn image_type(obj: &DefaultDicomObject) -> Vec<String> {
    obj.element_opt(tags::IMAGE_TYPE)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.trim().to_ascii_uppercase())
        .collect()
}

fn floats(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
}

/// Angle in degrees between the image normal (row x column direction cosines) and the
/// z axis; `None` without a usable Image Orientation (Patient).
pub fn tilt_deg(obj: &DefaultDicomObject) -> Option<f64> {
    let o = floats(obj, tags::IMAGE_ORIENTATION_PATIENT)?;
    let [rx, ry, rz, cx, cy, cz] = <[f64; 6]>::try_from(o.get(..6)?).ok()?;
    let n = [ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx];
    let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if !(norm.is_finite() && norm > 1e-6) {
        return None;
    }
    Some((n[2].abs() / norm).clamp(0.0, 1.0).acos().to_degrees())
}

impl SeriesRules {
    /// A refusal wins over a pass, a pass over denoising.
    pub fn verdict(&self, obj: &DefaultDicomObject) -> Verdict {
        let mut matched: Vec<(Action, String)> = Vec::new();
        if image_type(obj).iter().any(|v| v == "LOCALIZER") {
            matched.push((
                self.localizer,
                "a localizer (Image Type LOCALIZER; --rule-localizer)".into(),
            ));
        }
        if let Some(t) = tilt_deg(obj).filter(|&t| t > MAX_AXIAL_TILT_DEG) {
            matched.push((
                self.non_axial,
                format!("not axial (normal {t:.0} degrees from the z axis; --rule-non-axial)"),
            ));
        }
        if let Some((lo, hi)) = self.thickness_mm {
            let t = floats(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied());
            match t {
                Some(t) if (lo..=hi).contains(&t) => {}
                other => matched.push((
                    self.thickness_action,
                    format!(
                        "slice thickness {} outside {lo}-{hi} mm (--rule-thickness-mm)",
                        other.map_or("unknown".to_owned(), |t| format!("{t} mm"))
                    ),
                )),
            }
        }
        let pick = |a: Action| {
            matched
                .iter()
                .find(|(m, _)| *m == a)
                .map(|(_, w)| w.clone())
        };
        if let Some(why) = pick(Action::Refuse) {
            Verdict::Refuse(why)
        } else if let Some(why) = pick(Action::Pass) {
            Verdict::Pass(why)
        } else {
            Verdict::Denoise
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};

    fn ct(
        image_type: &[&str],
        orientation: [f64; 6],
        thickness: Option<&str>,
    ) -> DefaultDicomObject {
        let bytes = std::fs::read(ldct_testkit::dicom_test_file("CT_small.dcm")).unwrap();
        let mut obj = ldct_imaging::dicom::parse_dicom_bytes(&bytes).unwrap();
        obj.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(image_type.iter().map(|s| s.to_string()).collect()),
        ));
        obj.put(DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(orientation.iter().map(|v| v.to_string()).collect()),
        ));
        if let Some(t) = thickness {
            obj.put(DataElement::new(
                tags::SLICE_THICKNESS,
                VR::DS,
                PrimitiveValue::from(t),
            ));
        } else {
            obj.remove_element(tags::SLICE_THICKNESS);
        }
        obj
    }

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    const CORONAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
    // A 30 degree gantry tilt: still axial.
    const TILTED: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 0.866_025, -0.5];

    #[test]
    fn axial_slices_are_denoised_and_scouts_and_reformats_pass_by_default() {
        let r = SeriesRules::default();
        let axial = ct(&["ORIGINAL", "PRIMARY", "AXIAL"], AXIAL, Some("5"));
        assert_eq!(r.verdict(&axial), Verdict::Denoise);
        assert!((tilt_deg(&ct(&["ORIGINAL"], TILTED, None)).unwrap() - 30.0).abs() < 0.01);
        assert_eq!(
            r.verdict(&ct(&["ORIGINAL", "PRIMARY"], TILTED, None)),
            Verdict::Denoise
        );
        let scout = ct(&["ORIGINAL", "PRIMARY", "LOCALIZER"], CORONAL, Some("1"));
        assert!(matches!(r.verdict(&scout), Verdict::Pass(w) if w.contains("localizer")));
        let coronal = ct(&["DERIVED", "SECONDARY", "REFORMATTED"], CORONAL, None);
        assert!(matches!(r.verdict(&coronal), Verdict::Pass(w) if w.contains("not axial")));
    }

    #[test]
    fn configured_rules_refuse_and_a_refusal_wins() {
        let r = SeriesRules {
            localizer: Action::Refuse,
            non_axial: Action::Pass,
            thickness_mm: Some((0.5, 3.0)),
            thickness_action: Action::Refuse,
        };
        let thick = ct(&["ORIGINAL", "PRIMARY", "AXIAL"], AXIAL, Some("5.0"));
        assert!(
            matches!(r.verdict(&thick), Verdict::Refuse(w) if w.contains("5 mm outside 0.5-3"))
        );
        let thin = ct(&["ORIGINAL", "PRIMARY", "AXIAL"], AXIAL, Some("1.25"));
        assert_eq!(r.verdict(&thin), Verdict::Denoise);
        let unknown = ct(&["ORIGINAL"], AXIAL, None);
        assert!(matches!(r.verdict(&unknown), Verdict::Refuse(w) if w.contains("unknown")));
        // A coronal scout: pass (non-axial) and refuse (localizer): refused.
        let scout = ct(&["ORIGINAL", "PRIMARY", "LOCALIZER"], CORONAL, Some("1"));
        assert!(matches!(r.verdict(&scout), Verdict::Refuse(w) if w.contains("localizer")));
        let everything = SeriesRules {
            localizer: Action::Denoise,
            non_axial: Action::Denoise,
            ..SeriesRules::default()
        };
        assert_eq!(everything.verdict(&scout), Verdict::Denoise);
    }

    #[test]
    fn thickness_ranges_parse() {
        assert_eq!(parse_thickness("0.5-5"), Ok((0.5, 5.0)));
        for bad in ["5", "5-1", "-1-2", "a-b", "nan-1"] {
            assert!(parse_thickness(bad).is_err(), "{bad}");
        }
    }
}
