//! Low-dose CT simulation: make a (full-dose, low-dose) pair from one full-dose slice
//! by inserting noise into its projections, as the AAPM challenge's quarter-dose data
//! were made.
//!
//! Pipeline per slice: HU -> linear attenuation `mu` (HU below -1000 clamped to air)
//! -> forward projection ([`project`], Joseph's method) -> photon counts at the dose
//! fraction ([`dose`]) -> log -> filtered back-projection ([`fbp`], [`filter`]) -> HU
//! on the input grid.
//!
//! The pair: `qd` is reconstructed from the noisy projections, `fd` from the
//! noise-free projections of the same slice through the same projector, filter and
//! back-projector. So the pair differs only by the inserted noise, and `fd` keeps
//! the real noise and texture of the input full-dose scan (no second full-dose noise
//! realisation is added on top of it). See trainer/README.md, "Simulation".
//!
//! - [`geometry`]: image grid, parallel / fan beam, defaults.
//! - [`project`]: Joseph forward projector (rayon over views).
//! - [`filter`]: ramp, Shepp-Logan, cosine and Hann filters (zero-padded FFT).
//! - [`fbp`]: parallel FBP and weighted fan-beam FBP (rayon over image rows).
//! - [`dose`]: Poisson + electronic noise, the log transform, seeds.
//! - [`batch`]: many slices: shared simulators, file names, progress, previews.

pub mod batch;
pub mod dose;
pub mod fbp;
pub mod filter;
pub mod geometry;
pub mod project;

use ldct_imaging::hu::Attenuation;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

pub use dose::{derive_seed, DoseModel, DEFAULT_FLOOR, DEFAULT_I0, LODOPAB_N0};
pub use fbp::Fbp;
pub use filter::Filter;
pub use geometry::{
    Detector, FanGeometry, Geometry, GeometryKind, GeometrySpec, ImageGrid, ParallelGeometry,
    DEFAULT_FOV_MM, DEFAULT_SDD_MM, DEFAULT_SID_MM,
};
pub use project::forward_project;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error("invalid dose settings: {0}")]
    Dose(String),
    #[error("image is {got:?} but the simulator was built for {want:?}")]
    Shape {
        got: (usize, usize),
        want: (usize, usize),
    },
    #[error("image has non-finite values")]
    NonFinite,
}

/// Named settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// LoDoPaB-CT (Leuschner et al. 2021): parallel beam, 1000 views over 180
    /// degrees, Poisson noise with N0 = 4096 photons per detector bin, zero counts
    /// set to 0.1, no electronic noise. LoDoPaB's low-dose data are at N0 itself, so
    /// the dose fraction defaults to 1 with this preset.
    Lodopab,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lodopab" | "lodopab-ct" => Ok(Preset::Lodopab),
            _ => Err(format!("unknown preset {s:?} (lodopab)")),
        }
    }
}

/// Everything that defines a simulation, except the image and the seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub geometry: GeometrySpec,
    pub dose_model: DoseModel,
    /// Dose fraction of the low-dose image (0.25 = quarter dose).
    pub dose: f64,
    pub filter: Filter,
    /// mu of water per mm for HU <-> mu.
    pub mu_water: f32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            geometry: GeometrySpec::default(),
            dose_model: DoseModel::default(),
            dose: 0.25,
            filter: Filter::Ramp,
            mu_water: ldct_imaging::hu::MU_WATER_AAPM,
        }
    }
}

impl SimConfig {
    /// The settings of a preset (dose fraction 1: see [`Preset::Lodopab`]).
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Lodopab => Self {
                geometry: GeometrySpec::parallel().with_views(1000),
                dose_model: DoseModel {
                    i0: LODOPAB_N0,
                    electronic_noise: 0.0,
                    floor: DEFAULT_FLOOR,
                },
                dose: 1.0,
                filter: Filter::Ramp,
                mu_water: ldct_imaging::hu::MU_WATER_AAPM,
            },
        }
    }
}

/// One simulated pair, in HU on the input grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Noise-free projections, same reconstruction.
    pub fd: Array2<f32>,
    /// Noisy projections at the dose fraction.
    pub qd: Array2<f32>,
}

/// A simulator for one image size and pixel spacing: geometry, filters and tables
/// built once and reused for every slice.
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    fbp: Fbp,
    attenuation: Attenuation,
}

impl Simulator {
    pub fn new(config: SimConfig, grid: ImageGrid) -> Result<Self, SimError> {
        config.dose_model.validate()?;
        if !(config.dose.is_finite() && config.dose > 0.0) {
            return Err(SimError::Dose(format!(
                "dose fraction must be positive, got {}",
                config.dose
            )));
        }
        let geometry = config.geometry.resolve(&grid)?;
        Ok(Self {
            config,
            fbp: Fbp::new(grid, geometry, config.filter),
            attenuation: Attenuation::new(config.mu_water),
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn grid(&self) -> &ImageGrid {
        self.fbp.grid()
    }

    pub fn geometry(&self) -> &Geometry {
        self.fbp.geometry()
    }

    pub fn fbp(&self) -> &Fbp {
        &self.fbp
    }

    fn check(&self, hu: &ArrayView2<f32>) -> Result<(), SimError> {
        let g = self.grid();
        if hu.dim() != (g.rows, g.cols) {
            return Err(SimError::Shape {
                got: hu.dim(),
                want: (g.rows, g.cols),
            });
        }
        if !hu.iter().all(|v| v.is_finite()) {
            return Err(SimError::NonFinite);
        }
        Ok(())
    }

    /// HU -> mu per mm, HU below -1000 (padding outside a scanner's FOV) set to air.
    pub fn hu_to_mu(&self, hu: ArrayView2<f32>) -> Array2<f32> {
        hu.mapv(|v| self.attenuation.hu_to_mu(v.max(-1000.0)))
    }

    /// mu per mm -> HU.
    pub fn mu_to_hu(&self, mu: Array2<f32>) -> Array2<f32> {
        mu.mapv_into(|v| self.attenuation.mu_to_hu(v))
    }

    /// Noise-free sinogram `[views, bins]` of a HU image.
    pub fn project(&self, hu: ArrayView2<f32>) -> Result<Array2<f32>, SimError> {
        self.check(&hu)?;
        let mu = self.hu_to_mu(hu);
        Ok(forward_project(mu.view(), self.grid(), self.geometry()))
    }

    /// FBP of a sinogram, in HU.
    pub fn reconstruct(&self, sino: ArrayView2<f32>) -> Array2<f32> {
        self.mu_to_hu(self.fbp.reconstruct(sino))
    }

    /// Noise-free projection then FBP, in HU: the full-dose partner alone.
    pub fn round_trip(&self, hu: ArrayView2<f32>) -> Result<Array2<f32>, SimError> {
        let sino = self.project(hu)?;
        Ok(self.reconstruct(sino.view()))
    }

    /// The low-dose image alone at dose fraction `dose`, in HU.
    pub fn low_dose(
        &self,
        hu: ArrayView2<f32>,
        dose: f64,
        seed: u64,
    ) -> Result<Array2<f32>, SimError> {
        let sino = self.project(hu)?;
        let noisy = self.config.dose_model.noisy(&sino, dose, seed)?;
        Ok(self.reconstruct(noisy.view()))
    }

    /// The pair of one slice at the configured dose. `seed` should be the slice's own
    /// seed (see [`slice_seed`]).
    pub fn pair(&self, hu: ArrayView2<f32>, seed: u64) -> Result<Pair, SimError> {
        let mut sino = self.project(hu)?;
        let mut noisy = self
            .config
            .dose_model
            .noisy(&sino, self.config.dose, seed)?;
        self.fbp.filter(&mut sino);
        self.fbp.filter(&mut noisy);
        let [fd, qd] = self.fbp.backproject_pair(sino.view(), noisy.view());
        Ok(Pair {
            fd: self.mu_to_hu(fd),
            qd: self.mu_to_hu(qd),
        })
    }
}

/// How per-slice seeds are made (recorded in the JSON files).
pub const SEED_RULE: &str = "slice i uses derive(seed, i) (SplitMix64), view k of it \
     derive(slice seed, k): results depend on the seed only, not on threads or on which \
     slices are simulated";

/// The seed of slice `index` of a run seeded with `seed`.
pub fn slice_seed(seed: u64, index: usize) -> u64 {
    derive_seed(seed ^ 0x5EED_5EED_0000_0000, index as u64)
}

/// Pixel spacing `[row, col]` (mm) to use: the flag, else the image's, else
/// [`DEFAULT_FOV_MM`] over the larger side. The bool says whether it was assumed.
pub fn pixel_spacing(
    flag: Option<f64>,
    image: Option<[f64; 2]>,
    rows: usize,
    cols: usize,
) -> ([f64; 2], bool) {
    if let Some(s) = flag {
        return ([s, s], false);
    }
    if let Some(s) = image.filter(|s| s.iter().all(|v| v.is_finite() && *v > 0.0)) {
        return (s, false);
    }
    let s = DEFAULT_FOV_MM / rows.max(cols) as f64;
    ([s, s], true)
}
