//! Evaluation: the low-dose input and the model's output against full dose, per
//! slice and on average, in the report windows ([-1000, 1000] and [-160, 240] HU).
//! Metrics are the imaging crate's (tested against scikit-image).

use std::fmt::Write as _;
use std::path::Path;

use ldct_imaging::metrics::{quality, Quality};
use ldct_imaging::window::{Normaliser, Window};
use ndarray::Array2;
use serde::Serialize;

use crate::model::{ModelError, Network};

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Imaging(#[from] ldct_imaging::ImagingError),
    #[error("{0}")]
    Invalid(String),
}

/// One slice's figures: for each report window, input and output quality.
#[derive(Debug, Clone, Serialize)]
pub struct SliceEval {
    pub name: String,
    pub input: Vec<Quality>,
    pub output: Vec<Quality>,
}

/// Means over slices, for the input and the model, per window.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub slices: usize,
    pub windows: Vec<[f32; 2]>,
    pub input: Vec<MeanQuality>,
    pub output: Vec<MeanQuality>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MeanQuality {
    pub psnr: f64,
    pub ssim: f64,
    pub rmse_hu: f64,
}

/// Denoises one HU slice with a network (whole slice, any size), composed with the input
/// as the server does at full strength ([`ldct_proto::contract::compose`]).
pub fn denoise_hu(
    net: &Network,
    norm: &Normaliser,
    hu: &Array2<f32>,
) -> Result<Array2<f32>, ModelError> {
    let mut x = hu.clone();
    norm.forward_inplace(
        x.as_slice_mut()
            .ok_or_else(|| ModelError::Unsupported("a slice that is not contiguous".into()))?,
    );
    // A noise-conditioned network gets the slice's own noise estimate (0 when the
    // slice has too little flat tissue to estimate it), as the sampler gave it.
    let map = (net.arch().input_channels == 2).then(|| {
        ldct_proto::contract::noise_map_value(
            ldct_imaging::noise::estimate_noise_hu(hu),
            [norm.window.lo, norm.window.hi],
            [norm.range_lo, norm.range_hi],
        )
    });
    let mut y = net.denoise_normalised_with(&x, map)?;
    let v = y
        .as_slice_mut()
        .ok_or_else(|| ModelError::Unsupported("an output that is not contiguous".into()))?;
    norm.inverse_inplace(v);
    // As the server composes its output: pixels outside the window pass unchanged.
    let w = norm.window;
    let outside = ldct_proto::contract::OutsideWindow::for_window(w.lo, w.hi);
    let input = hu.as_standard_layout();
    if let Some(src) = input.as_slice() {
        ldct_proto::contract::compose(src, v, &outside, 1.0);
    }
    Ok(y)
}

/// Evaluates `(name, low, full)` HU slices; `progress` is called after each.
pub fn evaluate(
    net: &Network,
    norm: &Normaliser,
    pairs: impl IntoIterator<Item = (String, Array2<f32>, Array2<f32>)>,
    mut progress: impl FnMut(&SliceEval),
) -> Result<Vec<SliceEval>, EvalError> {
    let mut out = vec![];
    for (name, low, full) in pairs {
        if low.dim() != full.dim() {
            return Err(EvalError::Invalid(format!(
                "{name}: low-dose {:?} and full-dose {:?} differ in size",
                low.dim(),
                full.dim()
            )));
        }
        let den = denoise_hu(net, norm, &low)?;
        let mut e = SliceEval {
            name,
            input: vec![],
            output: vec![],
        };
        for w in Window::REPORT {
            e.input.push(quality(&full, &low, w)?);
            e.output.push(quality(&full, &den, w)?);
        }
        progress(&e);
        out.push(e);
    }
    if out.is_empty() {
        return Err(EvalError::Invalid("no slices to evaluate".into()));
    }
    Ok(out)
}

fn mean(rows: &[SliceEval], pick: impl Fn(&SliceEval) -> &Quality) -> MeanQuality {
    let n = rows.len().max(1) as f64;
    let (mut p, mut s, mut r) = (0.0, 0.0, 0.0);
    for row in rows {
        let q = pick(row);
        p += q.psnr;
        s += q.ssim;
        r += q.rmse_hu;
    }
    MeanQuality {
        psnr: p / n,
        ssim: s / n,
        rmse_hu: r / n,
    }
}

pub fn summarise(rows: &[SliceEval]) -> EvalSummary {
    let windows: Vec<[f32; 2]> = Window::REPORT.iter().map(|w| [w.lo, w.hi]).collect();
    EvalSummary {
        slices: rows.len(),
        input: (0..windows.len())
            .map(|k| mean(rows, |r| &r.input[k]))
            .collect(),
        output: (0..windows.len())
            .map(|k| mean(rows, |r| &r.output[k]))
            .collect(),
        windows,
    }
}

/// Per-slice CSV: `slice`, then for each window input and output PSNR/SSIM/RMSE.
pub fn to_csv(rows: &[SliceEval]) -> String {
    let mut s = String::from("slice");
    for w in Window::REPORT {
        let l = w.label();
        for who in ["input", "model"] {
            let _ = write!(s, ",{who}_psnr_{l},{who}_ssim_{l},{who}_rmse_hu_{l}");
        }
    }
    s.push('\n');
    for r in rows {
        s.push_str(&r.name);
        for k in 0..r.input.len() {
            for q in [&r.input[k], &r.output[k]] {
                let _ = write!(s, ",{:.4},{:.5},{:.3}", q.psnr, q.ssim, q.rmse_hu);
            }
        }
        s.push('\n');
    }
    s
}

/// `eval.json`: the model's means as flat keys (`psnr_-1000_1000`, ... the keys
/// the exporter copies into the manifest and the retraining gate compares), the
/// input's under `input`, and the gains under `gain`.
pub fn to_json(summary: &EvalSummary, data: &str) -> serde_json::Value {
    let mut model = serde_json::Map::new();
    let mut input = serde_json::Map::new();
    let mut gain = serde_json::Map::new();
    for (k, w) in summary.windows.iter().enumerate() {
        let l = format!("{}_{}", w[0], w[1]);
        let (i, o) = (summary.input[k], summary.output[k]);
        for (map, q) in [(&mut model, o), (&mut input, i)] {
            map.insert(format!("psnr_{l}"), q.psnr.into());
            map.insert(format!("ssim_{l}"), q.ssim.into());
            map.insert(format!("rmse_hu_{l}"), q.rmse_hu.into());
        }
        gain.insert(format!("psnr_{l}"), (o.psnr - i.psnr).into());
        gain.insert(format!("ssim_{l}"), (o.ssim - i.ssim).into());
    }
    model.insert("input".into(), input.into());
    model.insert("gain".into(), gain.into());
    model.insert("eval_slices".into(), summary.slices.into());
    model.insert("eval_data".into(), data.into());
    serde_json::Value::Object(model)
}

/// A Markdown table of the summary.
pub fn to_markdown(summary: &EvalSummary) -> String {
    let mut s = String::from(
        "| window (HU) | | PSNR (dB) | SSIM | RMSE (HU) |\n|---|---|---:|---:|---:|\n",
    );
    for (k, w) in summary.windows.iter().enumerate() {
        let (i, o) = (summary.input[k], summary.output[k]);
        let _ = writeln!(
            s,
            "| [{}, {}] | low-dose input | {:.2} | {:.4} | {:.2} |",
            w[0], w[1], i.psnr, i.ssim, i.rmse_hu
        );
        let _ = writeln!(
            s,
            "| | model | {:.2} ({:+.2}) | {:.4} | {:.2} |",
            o.psnr,
            o.psnr - i.psnr,
            o.ssim,
            o.rmse_hu
        );
    }
    s
}

/// Writes `eval.csv` and `eval.json` (names prefixed by `stem`) into `dir`.
pub fn write(
    dir: &Path,
    stem: &str,
    rows: &[SliceEval],
    data: &str,
) -> std::io::Result<EvalSummary> {
    let summary = summarise(rows);
    std::fs::write(dir.join(format!("{stem}.csv")), to_csv(rows))?;
    let json = serde_json::to_string_pretty(&to_json(&summary, data)).unwrap_or_default();
    std::fs::write(dir.join(format!("{stem}.json")), json + "\n")?;
    Ok(summary)
}
