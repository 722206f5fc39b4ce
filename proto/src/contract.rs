//! The pixel contract of a model: the one definition the trainer, the exporter and the
//! server share.
//!
//! - The graph has one input [`INPUT_NAME`] and one output [`OUTPUT_NAME`], both float32
//!   `[N, 1, H, W]` in the manifest's normalised range ([`check_io`]; with the feature
//!   `runtime`, [`check_session`] checks an ONNX Runtime session). A noise-conditioned
//!   model (manifest `noise_map`, [`NoiseMap`]) takes `[N, 2, H, W]`: the image, then
//!   a constant plane holding the slice's noise estimate in the normalised range.
//! - H and W may be any size: the caller pads the image at the bottom and the right, by
//!   reflection ([`reflect_index`]: numpy's `mode="reflect"`, ONNX `Pad` mode `reflect`),
//!   up to a multiple of the model's spatial multiple and to at least its minimum size
//!   ([`Padding`]), runs the graph and crops the output back to the top-left `H x W`.
//! - A model is smoke-tested on [`smoke_image`] before it is served or published: the
//!   output must have the input's shape and be finite.
//! - The network sees the image clipped to its HU window, so its output says nothing
//!   about pixels far outside it (bone, iodine, metal above the window; the padding
//!   outside a scanner's field of view below it). [`compose`] builds the served image:
//!   `out = in + strength * w(in) * (net - in)` with the weight `w` of
//!   [`OutsideWindow`]: 1 inside the window, falling smoothly to 0 beyond it, so such
//!   pixels come back exactly as they went in, and `strength` 0 returns the input bit
//!   for bit.

/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "output";
/// Side of the smoke-test image before padding.
pub const SMOKE_SIDE: usize = 32;

/// A graph input or output that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("the graph has no {0} named {1:?}")]
    Missing(&'static str, &'static str),
    #[error("{name} is {dtype}, not float32")]
    NotFloat32 { name: String, dtype: String },
    #[error("{name} has rank {rank}, expected [N, 1, H, W]")]
    Rank { name: String, rank: usize },
    #[error("{name} has {channels} channels, expected {expected}")]
    Channels {
        name: String,
        channels: i64,
        expected: i64,
    },
    #[error("{name} is not a tensor: {what}")]
    NotATensor { name: String, what: String },
    #[error("output shape {output:?} differs from input shape {input:?}")]
    OutputShape {
        input: Vec<usize>,
        output: Vec<usize>,
    },
    #[error("the output has NaN or infinite values")]
    NotFinite,
}

/// The conditioning input of a noise-conditioned model (the manifest's `noise_map`):
/// channel 1 of the input is a constant plane of the slice's noise estimate
/// ([`NOISE_MAP_ESTIMATOR`]) in the normalised range.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseMap {
    /// How the value is computed (for people; [`NOISE_MAP_ESTIMATOR`]).
    pub estimator: String,
}

impl Default for NoiseMap {
    fn default() -> Self {
        Self {
            estimator: NOISE_MAP_ESTIMATOR.to_owned(),
        }
    }
}

/// What the noise map of a noise-conditioned model holds.
pub const NOISE_MAP_ESTIMATOR: &str = "ldct_imaging::noise::estimate_noise_hu of the whole \
     input slice in HU (robust high-pass residual over flat in-body pixels), times the \
     normalisation's scale (HU -> normalised units); 0 when the slice has too little flat \
     tissue for an estimate";

/// The noise map value (normalised units) for a slice whose noise estimate is
/// `estimate_hu` (`None`: no estimate, 0), with the normalisation `range` over
/// `hu_window`.
pub fn noise_map_value(estimate_hu: Option<f32>, hu_window: [f32; 2], range: [f32; 2]) -> f32 {
    estimate_hu.map_or(0.0, |e| {
        e * (range[1] - range[0]) / (hu_window[1] - hu_window[0])
    })
}

/// Checks one graph input or output: float32 of rank 4 with one channel (`-1` marks a
/// symbolic dimension).
pub fn check_io(
    name: &str,
    is_float32: bool,
    dtype: &str,
    shape: &[i64],
) -> Result<(), ContractError> {
    check_io_channels(name, is_float32, dtype, shape, 1)
}

/// [`check_io`] for `channels` channels.
pub fn check_io_channels(
    name: &str,
    is_float32: bool,
    dtype: &str,
    shape: &[i64],
    channels: i64,
) -> Result<(), ContractError> {
    if !is_float32 {
        return Err(ContractError::NotFloat32 {
            name: name.to_owned(),
            dtype: dtype.to_owned(),
        });
    }
    if shape.len() != 4 {
        return Err(ContractError::Rank {
            name: name.to_owned(),
            rank: shape.len(),
        });
    }
    if shape[1] != channels {
        return Err(ContractError::Channels {
            name: name.to_owned(),
            channels: shape[1],
            expected: channels,
        });
    }
    Ok(())
}

/// Checks the input (`input_channels` channels: 1, or 2 for a noise-conditioned
/// model) and the output (1 channel) of an ONNX Runtime session against the contract.
#[cfg(feature = "runtime")]
pub fn check_session(
    session: &ort::session::Session,
    input_channels: usize,
) -> Result<(), ContractError> {
    use ort::value::{TensorElementType, ValueType};
    let check = |name: &str, ty: &ValueType, channels: usize| match ty {
        ValueType::Tensor { ty, shape, .. } => check_io_channels(
            name,
            *ty == TensorElementType::Float32,
            &format!("{ty:?}"),
            &shape.iter().copied().collect::<Vec<i64>>(),
            channels as i64,
        ),
        other => Err(ContractError::NotATensor {
            name: name.to_owned(),
            what: format!("{other:?}"),
        }),
    };
    let input = session
        .inputs()
        .iter()
        .find(|i| i.name() == INPUT_NAME)
        .ok_or(ContractError::Missing("input", INPUT_NAME))?;
    check(INPUT_NAME, input.dtype(), input_channels)?;
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == OUTPUT_NAME)
        .ok_or(ContractError::Missing("output", OUTPUT_NAME))?;
    check(OUTPUT_NAME, output.dtype(), 1)
}

/// Checks a smoke-test output against its input: the same shape with one channel, all
/// finite.
pub fn check_output(
    input: &[usize],
    output: &[usize],
    values: impl IntoIterator<Item = f32>,
) -> Result<(), ContractError> {
    let mut want = input.to_vec();
    if want.len() == 4 {
        want[1] = 1;
    }
    if want != output {
        return Err(ContractError::OutputShape {
            input: input.to_vec(),
            output: output.to_vec(),
        });
    }
    if !values.into_iter().all(f32::is_finite) {
        return Err(ContractError::NotFinite);
    }
    Ok(())
}

/// The source index of padded position `i` on an axis of length `n`: reflection
/// without repeating the edge sample (`[a b c d]` pads to `[a b c d c b a b ...]`),
/// continued periodically when the pad is longer than the axis.
pub fn reflect_index(i: usize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let j = i % period;
    if j < n {
        j
    } else {
        period - j
    }
}

/// Where the network's output is used, in HU of the input pixel: weight 0 at or below
/// `below[0]`, rising smoothly (smoothstep) to 1 at `below[1]`, 1 up to `above[0]`,
/// falling smoothly to 0 at `above[1]` and 0 beyond. Stated in the manifest
/// (`outside_window`); [`OutsideWindow::for_window`] is the rule for manifests without it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutsideWindow {
    pub below: [f32; 2],
    pub above: [f32; 2],
}

impl OutsideWindow {
    /// Margin below the window's low end where the output is still fully used: air
    /// reads down to `lo` minus several noise sigmas at the lowest doses.
    pub const BELOW_FULL_HU: f32 = 300.0;
    /// Below the window's low end, from here on the input passes unchanged (fill values
    /// outside the field of view are -1024 - 1000 and lower: -2048, -3024, ...).
    pub const BELOW_NONE_HU: f32 = 500.0;
    /// Width of the ramp under the window's high end (the network's output cannot rise
    /// above it, so a pixel at or above it passes unchanged).
    pub const ABOVE_RAMP_HU: f32 = 200.0;

    /// The rule for a HU window `[lo, hi]`.
    pub fn for_window(lo: f32, hi: f32) -> Self {
        let ramp = Self::ABOVE_RAMP_HU.min(0.5 * (hi - lo));
        Self {
            below: [lo - Self::BELOW_NONE_HU, lo - Self::BELOW_FULL_HU],
            above: [hi - ramp, hi],
        }
    }

    /// Checks the ramps are ordered and finite.
    pub fn validate(&self) -> Result<(), String> {
        let [a, b] = self.below;
        let [c, d] = self.above;
        let ok = [a, b, c, d].iter().all(|v| v.is_finite()) && a < b && b <= c && c < d;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "outside_window below {:?} / above {:?}: need below[0] < below[1] <= above[0] < above[1]",
                self.below, self.above
            ))
        }
    }

    /// The weight of the network's output at input value `hu`.
    pub fn weight(&self, hu: f32) -> f32 {
        let smooth = |t: f32| {
            let t = t.clamp(0.0, 1.0);
            t * t * (3.0 - 2.0 * t)
        };
        let [a, b] = self.below;
        let [c, d] = self.above;
        if hu <= a || hu >= d || hu.is_nan() {
            0.0
        } else if hu < b {
            smooth((hu - a) / (b - a))
        } else if hu <= c {
            1.0
        } else {
            smooth((d - hu) / (d - c))
        }
    }
}

/// The served image, in place: `denoised[i] = input[i] + strength * w(input[i]) *
/// (denoised[i] - input[i])` ([`OutsideWindow`]), both in HU. Strength 0 (or a pixel
/// of weight 0) gives the input value exactly. `strength` is clamped to [0, 1].
pub fn compose(input: &[f32], denoised: &mut [f32], outside: &OutsideWindow, strength: f32) {
    let s = if strength.is_nan() {
        0.0
    } else {
        strength.clamp(0.0, 1.0)
    };
    for (d, &x) in denoised.iter_mut().zip(input) {
        let w = s * outside.weight(x);
        *d = if w == 0.0 {
            x
        } else if w == 1.0 {
            *d
        } else {
            x + w * (*d - x)
        };
    }
}

/// The sizes a model's graph takes: multiples of `multiple`, at least `min_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub multiple: usize,
    pub min_size: usize,
}

impl Default for Padding {
    fn default() -> Self {
        Self {
            multiple: 1,
            min_size: 1,
        }
    }
}

impl Padding {
    /// A rule from a spatial multiple and a minimum size (0 counts as 1; the minimum is
    /// rounded up to the multiple).
    pub fn new(multiple: usize, min_size: usize) -> Self {
        let multiple = multiple.max(1);
        Self {
            multiple,
            min_size: min_size.max(1).div_ceil(multiple) * multiple,
        }
    }

    /// The padding of a model folder: the manifest's spatial multiple and minimum size
    /// (absent in manifests written before it existed: no minimum).
    pub fn of_manifest(m: &crate::manifest::Manifest) -> Self {
        Self::new(
            m.spatial_multiple as usize,
            m.min_size.unwrap_or(1) as usize,
        )
    }

    /// `n` rounded up to the multiple, and to at least the minimum size.
    pub fn padded_len(&self, n: usize) -> usize {
        (n.max(1).div_ceil(self.multiple) * self.multiple).max(self.min_size)
    }

    /// The size an `h x w` image is padded to.
    pub fn padded_size(&self, h: usize, w: usize) -> (usize, usize) {
        (self.padded_len(h), self.padded_len(w))
    }
}

/// The smoke-test input of a model with `channels` input channels: [`pattern_input`]
/// at the padded [`SMOKE_SIDE`].
pub fn smoke_input(padding: &Padding, range: [f32; 2], channels: usize) -> (usize, Vec<f32>) {
    let side = padding.padded_len(SMOKE_SIDE);
    (side, pattern_input(side, range, channels))
}

/// A `channels x side x side` test input (row-major): [`pattern_image`], then
/// (noise-conditioned models) a plane of a typical noise map value (2% of the range,
/// 20 HU in the default normalisation). The smoke test and the warmup run it.
pub fn pattern_input(side: usize, range: [f32; 2], channels: usize) -> Vec<f32> {
    let mut data = pattern_image(side, range);
    for _ in 1..channels {
        data.extend(std::iter::repeat_n(
            0.01 * (range[1] - range[0]),
            side * side,
        ));
    }
    data
}

/// The smoke-test image of a model: `side x side` (the padded [`SMOKE_SIDE`]) values in
/// the middle half of the normalised `range`, row-major.
pub fn smoke_image(padding: &Padding, range: [f32; 2]) -> (usize, Vec<f32>) {
    let side = padding.padded_len(SMOKE_SIDE);
    (side, pattern_image(side, range))
}

/// A `side x side` image of diagonal stripes in the middle half of the normalised
/// `range`, row-major.
pub fn pattern_image(side: usize, range: [f32; 2]) -> Vec<f32> {
    let [lo, hi] = range;
    (0..side * side)
        .map(|i| {
            let (y, x) = (i / side, i % side);
            let t = ((y * 7 + x * 3) % side) as f32 / side as f32;
            lo + (hi - lo) * (0.25 + 0.5 * t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_to_the_multiple_and_the_minimum() {
        let p = Padding::new(4, 0);
        assert_eq!(p.padded_size(512, 61), (512, 64));
        assert_eq!(p.padded_len(1), 4);
        assert_eq!(Padding::new(0, 0).padded_len(7), 7);
        // RED-CNN: any size from 21 px on.
        let redcnn = Padding::new(1, 21);
        assert_eq!(redcnn.padded_size(16, 30), (21, 30));
        // A minimum that is not a multiple is rounded up to one.
        let p = Padding::new(4, 9);
        assert_eq!(p.min_size, 12);
        assert_eq!(p.padded_size(5, 13), (12, 16));
    }

    #[test]
    fn reflection_matches_numpy_reflect() {
        // np.pad([0,1,2,3], (0, 8), mode="reflect") -> 0 1 2 3 2 1 0 1 2 3 2 1
        let idx: Vec<usize> = (0..12).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(idx, [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect_index(5, 1), 0);
        let idx: Vec<usize> = (0..5).map(|i| reflect_index(i, 2)).collect();
        assert_eq!(idx, [0, 1, 0, 1, 0]);
    }

    #[test]
    fn io_and_output_checks_name_the_problem() {
        assert!(check_io("input", true, "Float32", &[-1, 1, -1, -1]).is_ok());
        let e = check_io("input", false, "Int8", &[-1, 1, -1, -1]).unwrap_err();
        assert_eq!(e.to_string(), "input is Int8, not float32");
        let e = check_io("output", true, "Float32", &[-1, 3, -1, -1]).unwrap_err();
        assert_eq!(e.to_string(), "output has 3 channels, expected 1");
        assert!(check_io_channels("input", true, "Float32", &[-1, 2, -1, -1], 2).is_ok());
        assert!(check_io_channels("input", true, "Float32", &[-1, 1, -1, -1], 2).is_err());
        assert!(check_output(&[1, 2, 4, 4], &[1, 1, 4, 4], [0.0]).is_ok());
        assert_eq!(
            noise_map_value(Some(20.0), [-1000.0, 1000.0], [-1.0, 1.0]),
            0.02
        );
        assert_eq!(noise_map_value(None, [-1000.0, 1000.0], [-1.0, 1.0]), 0.0);
        let e = check_io("output", true, "Float32", &[-1, -1, -1]).unwrap_err();
        assert_eq!(e.to_string(), "output has rank 3, expected [N, 1, H, W]");
        assert!(check_output(&[1, 1, 4, 4], &[1, 1, 4, 4], [0.0, 1.0]).is_ok());
        assert_eq!(
            check_output(&[1, 1, 4, 4], &[1, 1, 4, 4], [f32::NAN]),
            Err(ContractError::NotFinite)
        );
        assert!(check_output(&[1, 1, 4, 4], &[1, 1, 2, 2], []).is_err());
    }

    #[test]
    fn outside_the_window_the_input_passes_unchanged() {
        let o = OutsideWindow::for_window(-1000.0, 1000.0);
        assert_eq!(o.below, [-1500.0, -1300.0]);
        assert_eq!(o.above, [800.0, 1000.0]);
        o.validate().unwrap();
        for (hu, w) in [
            (-3995.0, 0.0),
            (-2048.0, 0.0),
            (-1500.0, 0.0),
            (-1400.0, 0.5),
            (-1300.0, 1.0),
            (-1000.0, 1.0),
            (40.0, 1.0),
            (800.0, 1.0),
            (900.0, 0.5),
            (1000.0, 0.0),
            (1218.0, 0.0),
            (3071.0, 0.0),
        ] {
            assert!(
                (o.weight(hu) - w).abs() < 1e-6,
                "w({hu}) = {}",
                o.weight(hu)
            );
        }
        // Monotone ramps, continuous at their ends.
        let mut prev = 0.0;
        for i in 0..=200 {
            let w = o.weight(-1500.0 + i as f32);
            assert!(w >= prev);
            prev = w;
        }
        let input = [-3024.0, -1000.0, 40.0, 900.0, 1500.0];
        let net = [-1000.0, -990.0, 35.0, 880.0, 1000.0];
        let mut out = net;
        compose(&input, &mut out, &o, 1.0);
        assert_eq!(out, [-3024.0, -990.0, 35.0, 890.0, 1500.0]);
        let mut half = net;
        compose(&input, &mut half, &o, 0.5);
        assert_eq!(half, [-3024.0, -995.0, 37.5, 895.0, 1500.0]);
        // Strength 0: the input, bit for bit, whatever the network said.
        let odd = [f32::from_bits(0x3f80_0001), -1024.0, 0.1, 999.99, -0.0];
        let mut zero = [f32::MAX, 7.0, -3.0, 1.0, 5.0];
        compose(&odd, &mut zero, &o, 0.0);
        assert_eq!(zero.map(f32::to_bits), odd.map(f32::to_bits));
        assert!(OutsideWindow {
            below: [0.0, -1.0],
            above: [1.0, 2.0]
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_smoke_image_fits_the_padding_and_the_range() {
        let (side, data) = smoke_image(&Padding::new(64, 0), [-1.0, 1.0]);
        assert_eq!(side, 64);
        assert_eq!(data.len(), 64 * 64);
        assert!(data.iter().all(|v| (-0.5..=0.5).contains(v)));
        let (side, _) = smoke_image(&Padding::new(1, 40), [-1.0, 1.0]);
        assert_eq!(side, 40);
        assert_eq!(smoke_image(&Padding::new(4, 0), [0.0, 1.0]).0, 32);
    }
}
