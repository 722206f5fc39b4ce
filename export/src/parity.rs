//! The parity proof: the written ONNX file, run by ONNX Runtime (the `ort` crate,
//! the runtime the server uses), against the Candle forward of the same weights.
//!
//! Both sides see the same images the way the server feeds them: an image of any
//! `H x W` is padded by reflection at the bottom and the right to
//! [`Arch::padded_size`] (multiples of the manifest's `spatial_multiple`), run, and
//! the output cropped back to the top-left `H x W` ([`run_any_size`] here,
//! `Network::forward_any_size` on the Candle side).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use ldct_imaging::window::Normaliser;
use ldct_proto::arch::Arch;
use ldct_proto::contract::{reflect_index, INPUT_NAME, OUTPUT_NAME};
use ldct_proto::runtime;
use ldct_train::model::Network;
use ndarray::{Array2, Array4};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("Candle forward: {0}")]
    Candle(String),
    #[error(transparent)]
    Arch(#[from] ldct_proto::arch::ArchError),
    #[error("parity slice {path}: {message}")]
    Slice { path: String, message: String },
    #[error(
        "parity check FAILED for {case}: max |ONNX Runtime - Candle| = {diff:.3e} exceeds the \
         {precision} tolerance {tolerance:.0e} (the exported graph does not compute what the \
         Candle network computes)"
    )]
    Exceeded {
        case: String,
        diff: f32,
        tolerance: f32,
        precision: String,
    },
    #[error("{case}: output shape {actual:?}, expected {expected:?}")]
    Shape {
        case: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{case}: the output has NaN or infinite values")]
    NotFinite { case: String },
}

fn ort_err(e: impl std::fmt::Display) -> ParityError {
    ParityError::Ort(e.to_string())
}

fn candle_err(e: impl std::fmt::Display) -> ParityError {
    ParityError::Candle(e.to_string())
}

/// An ONNX Runtime session on a model file (CPU, all graph optimisations).
pub fn ort_session(path: &Path) -> Result<Session, ParityError> {
    let rt = runtime::init()?;
    Session::builder(&rt.environment)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort_err)?
        .commit_from_file(path)
        .map_err(|e| ParityError::Ort(format!("loading {}: {e}", path.display())))
}

/// Runs the session on `x` as it is (H and W must suit the graph).
pub fn run_ort(session: &mut Session, x: &Array4<f32>) -> Result<Array4<f32>, ParityError> {
    let x = x.as_standard_layout();
    let tensor = TensorRef::from_array_view(x.view()).map_err(ort_err)?;
    let outputs = session
        .run(ort::inputs![INPUT_NAME => tensor])
        .map_err(ort_err)?;
    let y = outputs[OUTPUT_NAME]
        .try_extract_array::<f32>()
        .map_err(ort_err)?;
    y.to_owned()
        .into_dimensionality()
        .map_err(|e| ParityError::Ort(format!("output is not 4-D: {e}")))
}

/// Pads `[N, C, H, W]` by reflection at the bottom and the right to `ph x pw`
/// (the pixel contract's reflection, as the server does).
pub fn pad_bottom_right(x: &Array4<f32>, ph: usize, pw: usize) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, ph.max(h), pw.max(w)), |(a, b, y, z)| {
        x[[a, b, reflect_index(y, h), reflect_index(z, w)]]
    })
}

/// Runs an exported model on any `H x W` the way the server does: reflection
/// padding at the bottom and the right to `arch.padded_size(H, W)`, the session,
/// then the top-left `H x W` of the output.
pub fn run_any_size(
    session: &mut Session,
    arch: &Arch,
    x: &Array4<f32>,
) -> Result<Array4<f32>, ParityError> {
    let (_, _, h, w) = x.dim();
    let (ph, pw) = arch.padded_size(h, w)?;
    let y = run_ort(session, &pad_bottom_right(x, ph, pw))?;
    Ok(
        y.slice(ndarray::s![.., .., ..h.min(y.dim().2), ..w.min(y.dim().3)])
            .to_owned(),
    )
}

/// The Candle float32 forward on any size (`Network::forward_any_size`).
pub fn candle_any_size(net: &Network, x: &Array4<f32>) -> Result<Array4<f32>, ParityError> {
    let shape = x.dim();
    let data: Vec<f32> = x.iter().copied().collect();
    let t = Tensor::from_vec(data, shape, net.device())
        .and_then(|t| t.to_dtype(net.dtype()))
        .map_err(candle_err)?;
    let y = net.forward_any_size(&t).map_err(candle_err)?;
    let dims = y.dims().to_vec();
    let v = y
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err)?;
    Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), v).map_err(candle_err)
}

/// Max abs difference of two arrays of the same shape.
pub fn max_abs_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}

/// One compared input.
#[derive(Debug, Clone, Serialize)]
pub struct ParityCase {
    pub label: String,
    pub shape: [usize; 4],
    /// What H and W were padded to before the graph ran.
    pub padded: [usize; 2],
    pub max_abs_diff: f32,
}

/// All compared inputs.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub precision: String,
    pub tolerance: f32,
    pub max_abs_diff: f32,
    pub cases: Vec<ParityCase>,
}

/// A labelled input in the normalised range.
#[derive(Debug, Clone)]
pub struct ParityInput {
    pub label: String,
    pub x: Array4<f32>,
}

/// Deterministic uniform noise in `[lo, hi)` (SplitMix64).
pub fn random_input(
    shape: (usize, usize, usize, usize),
    seed: u64,
    lo: f32,
    hi: f32,
) -> Array4<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    Array4::from_shape_simple_fn(shape, || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
    })
}

/// The default real CT slice: pydicom's `CT_small.dcm` (128x128) in the
/// workspace venv, when present.
pub fn default_ct_slice() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let lib = root.join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/pydicom/data/test_files/CT_small.dcm")
        })
        .find(|p| p.is_file())
}

/// Reads one CT slice (any format `ldct_imaging::read` knows) and normalises its
/// HU with `normaliser`, as `[1, channels, H, W]`: the image, and for a
/// noise-conditioned model (2 channels) its noise map as the server makes it.
pub fn ct_slice_input(
    path: &Path,
    normaliser: &Normaliser,
    channels: usize,
) -> Result<ParityInput, ParityError> {
    let err = |message: String| ParityError::Slice {
        path: path.display().to_string(),
        message,
    };
    let slices = ldct_imaging::read::read_ct(path).map_err(|e| err(e.to_string()))?;
    let first = slices
        .into_iter()
        .next()
        .ok_or_else(|| err("holds no slice".into()))?;
    let mut hu: Array2<f32> = first.hu;
    let map = ldct_proto::contract::noise_map_value(
        ldct_imaging::noise::estimate_noise_hu(&hu),
        [normaliser.window.lo, normaliser.window.hi],
        [normaliser.range_lo, normaliser.range_hi],
    );
    hu.mapv_inplace(|v| normaliser.forward(v));
    let (h, w) = hu.dim();
    let mut data: Vec<f32> = hu.iter().copied().collect();
    for _ in 1..channels {
        data.extend(std::iter::repeat_n(map, h * w));
    }
    let x = Array4::from_shape_vec((1, channels, h, w), data).map_err(|e| err(e.to_string()))?;
    Ok(ParityInput {
        label: format!(
            "CT slice {} ({h}x{w})",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
        x,
    })
}

/// The random inputs of the exporter's parity check: a batch of two at a size
/// the graph takes directly, an odd size (padded) and a non-square one.
pub fn default_random_inputs(arch: &Arch) -> Result<Vec<ParityInput>, ParityError> {
    let m = arch.spatial_multiple();
    let min = arch.min_size().unwrap_or(m);
    let base = (min.max(32)).div_ceil(m) * m;
    let sizes = [
        (2, base, base),
        (1, base + 5, base + 18),
        (1, base * 2 - 3, base + 1),
    ];
    Ok(sizes
        .iter()
        .enumerate()
        .map(|(i, &(n, h, w))| ParityInput {
            label: format!("random {n}x{h}x{w}"),
            x: random_input((n, arch.input_channels, h, w), 1000 + i as u64, -1.0, 1.0),
        })
        .collect())
}

/// Compares ONNX Runtime on `onnx_path` with the Candle forward of `net` on every
/// input; errors on the first case whose difference exceeds `tolerance`, or whose
/// output shape differs from its input's.
pub fn check_parity(
    net: &Network,
    onnx_path: &Path,
    inputs: &[ParityInput],
    precision: &str,
    tolerance: f32,
) -> Result<ParityReport, ParityError> {
    let mut session = ort_session(onnx_path)?;
    let arch = net.arch();
    let mut cases = Vec::new();
    let mut worst = 0.0f32;
    for input in inputs {
        let (n, c, h, w) = input.x.dim();
        let (ph, pw) = arch.padded_size(h, w)?;
        let ours = run_any_size(&mut session, arch, &input.x)?;
        let reference = candle_any_size(net, &input.x)?;
        let expected = vec![n, arch.output_channels, h, w];
        for (y, who) in [(&ours, "ONNX Runtime"), (&reference, "Candle")] {
            if y.shape() != expected.as_slice() {
                return Err(ParityError::Shape {
                    case: format!("{} ({who})", input.label),
                    actual: y.shape().to_vec(),
                    expected,
                });
            }
        }
        if !ours.iter().all(|v| v.is_finite()) {
            return Err(ParityError::NotFinite {
                case: input.label.clone(),
            });
        }
        let diff = max_abs_diff(&ours, &reference);
        tracing::info!(
            "parity {}: {n}x{c}x{h}x{w} (padded to {ph}x{pw}) max abs diff {diff:.3e}",
            input.label
        );
        cases.push(ParityCase {
            label: input.label.clone(),
            shape: [n, c, h, w],
            padded: [ph, pw],
            max_abs_diff: diff,
        });
        worst = if diff.is_nan() {
            f32::NAN
        } else {
            worst.max(diff)
        };
        if diff.is_nan() || diff > tolerance {
            return Err(ParityError::Exceeded {
                case: input.label.clone(),
                diff,
                tolerance,
                precision: precision.to_string(),
            });
        }
    }
    Ok(ParityReport {
        precision: precision.to_string(),
        tolerance,
        max_abs_diff: worst,
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_bounces_like_onnx_reflect() {
        let idx: Vec<usize> = (0..9).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect_index(5, 1), 0);
        let x = Array4::from_shape_fn((1, 1, 2, 3), |(_, _, y, z)| (y * 3 + z) as f32);
        let p = pad_bottom_right(&x, 4, 5);
        assert_eq!(p.dim(), (1, 1, 4, 5));
        assert_eq!(p[[0, 0, 2, 4]], x[[0, 0, 0, 0]]);
        assert_eq!(p[[0, 0, 3, 3]], x[[0, 0, 1, 1]]);
    }

    #[test]
    fn random_inputs_are_deterministic_and_in_range() {
        let a = random_input((1, 1, 8, 8), 3, -1.0, 1.0);
        assert_eq!(a, random_input((1, 1, 8, 8), 3, -1.0, 1.0));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_ne!(a, random_input((1, 1, 8, 8), 4, -1.0, 1.0));
    }
}
