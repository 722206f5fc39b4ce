//! `ldct-train simulate`: low-dose partners for full-dose CT slices.
//!
//! Writes `OUT/fd/0000.npy ...` and `OUT/qd/0000.npy ...` (float32 HU, one per input
//! slice, in input order), `OUT/preview.png` (input | fd | qd | qd - fd of the middle
//! slice) and `OUT/simulation.json` (every setting, the resolved geometry, the seed).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ldct_imaging::{npy, png, read, Window};
use rayon::prelude::*;
use serde::Serialize;

use crate::simulate::batch::{
    clear_npy_dir, preview_panels, slice_name, slice_progress, SimulatorCache, PAIR_NOTE,
};
use crate::simulate::{
    self, Detector, Filter, GeometryKind, Pair, Preset, SimConfig, DEFAULT_SDD_MM, DEFAULT_SID_MM,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GeometryArg {
    Parallel,
    Fan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// Curved, equally spaced in fan angle.
    Equiangular,
    /// Flat, equally spaced along the panel.
    Flat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FilterArg {
    Ramp,
    SheppLogan,
    Cosine,
    Hann,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// LoDoPaB-CT: parallel beam, 1000 views, N0 = 4096 photons, dose 1.
    Lodopab,
}

/// Simulation settings shared by `simulate` and `dataset import`.
#[derive(Debug, Clone, Args)]
pub struct SimOptions {
    /// Dose fraction of the low-dose image (0.25 = quarter dose). Default 0.25
    /// (1 with --preset lodopab).
    #[arg(long)]
    pub dose: Option<f64>,
    /// Scan geometry. Default fan (parallel with --preset lodopab).
    #[arg(long, value_enum)]
    pub geometry: Option<GeometryArg>,
    /// Fan-beam detector shape.
    #[arg(long, value_enum, default_value = "equiangular")]
    pub detector: DetectorArg,
    /// Views: over 180 degrees (parallel) or 360 (fan). Default pi/2 * image size
    /// (twice that for fan beam).
    #[arg(long)]
    pub views: Option<usize>,
    /// Detector bins. Default: enough to cover the image at --pitch.
    #[arg(long)]
    pub bins: Option<usize>,
    /// Detector bin pitch in mm at the detector. Default: rays half a pixel apart at
    /// the isocentre.
    #[arg(long)]
    pub pitch: Option<f64>,
    /// Source-to-isocentre distance, mm (fan beam).
    #[arg(long, default_value_t = DEFAULT_SID_MM)]
    pub sid: f64,
    /// Source-to-detector distance, mm (fan beam).
    #[arg(long, default_value_t = DEFAULT_SDD_MM)]
    pub sdd: f64,
    /// Incident photons per ray at full dose. Default 1e6 (4096 with --preset lodopab).
    #[arg(long)]
    pub i0: Option<f64>,
    /// Standard deviation of the electronic noise, in photon counts.
    #[arg(long, default_value_t = 0.0)]
    pub electronic_noise: f64,
    /// FBP filter.
    #[arg(long, value_enum, default_value = "ramp")]
    pub filter: FilterArg,
    /// Pixel size in mm (overrides the image's pixel spacing). Without either, the
    /// image is assumed to span a 350 mm field of view.
    #[arg(long)]
    pub pixel_size: Option<f64>,
    /// Named settings; explicit flags override them.
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// Random seed: slice i uses a seed derived from this and i, so results do not
    /// depend on the thread count or on which slices are simulated.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SimOptions {
    /// The simulator settings these flags ask for.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match self.preset {
            Some(PresetArg::Lodopab) => SimConfig::preset(Preset::Lodopab),
            None => SimConfig::default(),
        };
        if let Some(g) = self.geometry {
            cfg.geometry.kind = match g {
                GeometryArg::Parallel => GeometryKind::Parallel,
                GeometryArg::Fan => GeometryKind::Fan,
            };
        }
        cfg.geometry.detector = match self.detector {
            DetectorArg::Equiangular => Detector::EquiAngular,
            DetectorArg::Flat => Detector::Flat,
        };
        if self.views.is_some() {
            cfg.geometry.views = self.views;
        }
        cfg.geometry.bins = self.bins;
        cfg.geometry.pitch = self.pitch;
        cfg.geometry.sid = self.sid;
        cfg.geometry.sdd = self.sdd;
        if let Some(d) = self.dose {
            cfg.dose = d;
        }
        if let Some(i0) = self.i0 {
            cfg.dose_model.i0 = i0;
        }
        cfg.dose_model.electronic_noise = self.electronic_noise;
        cfg.filter = match self.filter {
            FilterArg::Ramp => Filter::Ramp,
            FilterArg::SheppLogan => Filter::SheppLogan,
            FilterArg::Cosine => Filter::Cosine,
            FilterArg::Hann => Filter::Hann,
        };
        if !(cfg.dose > 0.0 && cfg.dose.is_finite()) {
            bail!("--dose must be a positive fraction, got {}", cfg.dose);
        }
        if let Some(p) = self.pixel_size {
            if !(p > 0.0 && p.is_finite()) {
                bail!("--pixel-size must be positive, got {p}");
            }
        }
        cfg.dose_model.validate()?;
        Ok(cfg)
    }

    pub fn preset_name(&self) -> Option<&'static str> {
        self.preset.map(|p| match p {
            PresetArg::Lodopab => "lodopab",
        })
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Full-dose input: .npy ([H,W] or [N,H,W] HU), .dcm, a DICOM series folder, or a
    /// folder of .npy slices.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder (gets fd/, qd/, preview.png, simulation.json).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sim: SimOptions,
}

/// What `simulation.json` records.
#[derive(Debug, Serialize)]
pub struct SimulationRecord<'a> {
    pub input: String,
    pub slices: usize,
    pub seed: u64,
    pub seed_rule: &'static str,
    pub preset: Option<&'static str>,
    pub config: &'a SimConfig,
    /// Resolved geometry and pixel spacing `[row, col]` (mm) of the first slice.
    pub geometry: simulate::Geometry,
    pub pixel_spacing_mm: [f64; 2],
    pub pixel_spacing_assumed: bool,
    pub pair: &'static str,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = args.sim.config()?;
    let slices =
        read::read_ct(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if slices.is_empty() {
        bail!("{} holds no slices", args.input.display());
    }
    let n = slices.len();
    let cache = SimulatorCache::new(config, args.sim.pixel_size);
    let (first, assumed) = cache.get(&slices[0])?;
    if assumed {
        tracing::warn!(
            "no pixel spacing in the input and no --pixel-size: assuming {:.4} mm ({} mm FOV)",
            first.grid().dx,
            simulate::DEFAULT_FOV_MM
        );
    }
    tracing::info!(
        slices = n,
        geometry = ?first.geometry(),
        dose = config.dose,
        i0 = config.dose_model.i0,
        "simulating"
    );
    let fd_dir = args.out.join("fd");
    let qd_dir = args.out.join("qd");
    clear_npy_dir(&fd_dir)?;
    clear_npy_dir(&qd_dir)?;
    for d in [&fd_dir, &qd_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let started = Instant::now();
    let pb = slice_progress(n, "simulate");
    let preview_index = n / 2;
    let preview: Mutex<Option<Pair>> = Mutex::new(None);
    slices
        .par_iter()
        .enumerate()
        .try_for_each(|(i, slice)| -> anyhow::Result<()> {
            let (sim, _) = cache.get(slice)?;
            let pair = sim
                .pair(slice.hu.view(), simulate::slice_seed(args.sim.seed, i))
                .with_context(|| format!("slice {i}"))?;
            let name = format!("{}.npy", slice_name(i, n));
            npy::write_image(&fd_dir.join(&name), &pair.fd)?;
            npy::write_image(&qd_dir.join(&name), &pair.qd)?;
            if i == preview_index {
                *preview.lock().expect("preview lock") = Some(pair);
            }
            pb.inc(1);
            Ok(())
        })?;
    pb.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    if let Some(pair) = preview.into_inner().expect("preview lock") {
        let path = args.out.join("preview.png");
        let panels = preview_panels(&slices[preview_index], &pair, config.dose)?;
        png::write_comparison(&path, &panels, Window::FULL)?;
    }
    let record = SimulationRecord {
        input: args.input.display().to_string(),
        slices: n,
        seed: args.sim.seed,
        seed_rule: simulate::SEED_RULE,
        preset: args.sim.preset_name(),
        config: &config,
        geometry: *first.geometry(),
        pixel_spacing_mm: [first.grid().dy, first.grid().dx],
        pixel_spacing_assumed: assumed,
        pair: PAIR_NOTE,
    };
    let json = serde_json::to_string_pretty(&record)? + "\n";
    std::fs::write(args.out.join("simulation.json"), json)?;
    tracing::info!(
        slices = n,
        seconds = format!("{elapsed:.2}"),
        per_slice = format!("{:.3}", elapsed / n as f64),
        out = %args.out.display(),
        "wrote fd/ and qd/"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::simulate::{GeometryKind, LODOPAB_N0};

    fn options(args: &[&str]) -> super::SimOptions {
        let mut argv = vec!["ldct-train", "simulate", "--input", "x.npy", "--out", "o"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Simulate(a) => a.sim,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn defaults_and_preset() {
        let cfg = options(&[]).config().unwrap();
        assert_eq!(cfg.dose, 0.25);
        assert_eq!(cfg.geometry.kind, GeometryKind::Fan);
        assert_eq!(cfg.dose_model.i0, crate::simulate::DEFAULT_I0);

        let cfg = options(&["--preset", "lodopab"]).config().unwrap();
        assert_eq!(cfg.geometry.kind, GeometryKind::Parallel);
        assert_eq!(cfg.geometry.views, Some(1000));
        assert_eq!(cfg.dose_model.i0, LODOPAB_N0);
        assert_eq!(cfg.dose, 1.0);

        // Explicit flags override the preset.
        let cfg = options(&[
            "--preset",
            "lodopab",
            "--dose",
            "0.5",
            "--geometry",
            "fan",
            "--views",
            "64",
        ])
        .config()
        .unwrap();
        assert_eq!(
            (cfg.dose, cfg.geometry.kind, cfg.geometry.views),
            (0.5, GeometryKind::Fan, Some(64))
        );

        let cfg = options(&[
            "--filter",
            "shepp-logan",
            "--electronic-noise",
            "3",
            "--i0",
            "5e4",
        ])
        .config()
        .unwrap();
        assert_eq!(cfg.filter, crate::simulate::Filter::SheppLogan);
        assert_eq!(cfg.dose_model.electronic_noise, 3.0);
        assert_eq!(cfg.dose_model.i0, 5e4);

        assert!(options(&["--dose", "0"]).config().is_err());
        assert!(options(&["--i0=-1"]).config().is_err());
    }
}
