//! Filtered back-projection.
//!
//! - Parallel beam: ramp-filter each view (see [`super::filter`]), then back-project
//!   with linear interpolation on the detector, `f(x, y) = pi / n * sum_k
//!   Q_k(x cos(theta_k) + y sin(theta_k))`.
//! - Fan beam: weighted FBP directly in the fan geometry, no rebinning (Kak & Slaney
//!   ch. 3.4). Equi-angular detector: pre-weight by `sid * cos(gamma)`, filter with
//!   `g(gamma) = 1/2 (gamma / sin(gamma))^2 h(gamma)`, back-project with weight `1 / L^2`
//!   (`L` the source-to-pixel distance) at the pixel's fan angle. Flat detector:
//!   pre-weight by `sid / sqrt(sid^2 + s^2)` on the virtual detector through the
//!   isocentre, filter with `h / 2`, back-project with weight `1 / U^2`, `U` the
//!   pixel's distance from the source along the central ray over `sid`. Full 360-degree
//!   scans: each line is measured twice, hence the 1/2.
//!
//! Back-projection runs over image rows in parallel (each row sums over all views in
//! a fixed order), so the result is bit-identical whatever the thread count. Every
//! per-view trigonometric value is computed once per reconstruction.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::filter::{Filter, FilterBank};
use super::geometry::{Detector, FanGeometry, Geometry, ImageGrid};

/// Pixel-to-fan-angle map for the equi-angular detector: a table over `w = t / U`
/// of `(atan(w) / delta_gamma + centre, 1 / (1 + w^2))` (bin position and `cos^2` of
/// the fan angle), interpolated linearly, so the inner loop needs neither `atan` nor
/// a second division. Interpolation error: below 1e-8 rad for 1024 entries.
struct AtanTable {
    w0: f32,
    inv_step: f32,
    values: Vec<[f32; 2]>,
}

impl AtanTable {
    const SIZE: usize = 1024;

    fn new(w_max: f64, delta_gamma: f64, centre: f64) -> Self {
        let w0 = -w_max;
        let step = 2.0 * w_max / (Self::SIZE - 1) as f64;
        let values = (0..Self::SIZE + 1)
            .map(|k| {
                let w = w0 + k as f64 * step;
                [
                    (w.atan() / delta_gamma + centre) as f32,
                    (1.0 / (1.0 + w * w)) as f32,
                ]
            })
            .collect();
        Self {
            w0: w0 as f32,
            inv_step: (1.0 / step) as f32,
            values,
        }
    }

    /// `(bin position, cos^2(gamma))` of `w = tan(gamma)`.
    #[inline(always)]
    fn lookup(&self, w: f32) -> (f32, f32) {
        let pos = ((w - self.w0) * self.inv_step).clamp(0.0, (Self::SIZE - 1) as f32);
        let k = pos as usize;
        let f = pos - k as f32;
        let (a, b) = (self.values[k], self.values[k + 1]);
        (a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]))
    }
}

/// Zero bins added at each end of a detector row before back-projection.
const PAD: usize = 2;
/// Image rows per parallel task: the views' data stay in cache across them.
const ROW_BLOCK: usize = 8;
/// Views summed per pixel visit.
const VIEW_BLOCK: usize = 8;

/// Filtered sinograms interleaved for back-projection: `[view][PAD + bin + PAD][N]`.
struct Interleaved<const N: usize> {
    data: Vec<[f32; N]>,
    stride: usize,
    /// Largest position (in padded bins) that still reads inside the buffer.
    max_pos: f32,
}

impl<const N: usize> Interleaved<N> {
    fn new(sinos: &[ArrayView2<f32>; N]) -> Self {
        let (views, bins) = sinos[0].dim();
        let stride = bins + 2 * PAD;
        let mut data = vec![[0.0f32; N]; views * stride];
        for (n, s) in sinos.iter().enumerate() {
            assert_eq!(s.dim(), (views, bins), "sinograms of different shapes");
            for ((k, b), &v) in s.indexed_iter() {
                data[k * stride + PAD + b][n] = v;
            }
        }
        Self {
            data,
            stride,
            max_pos: (stride - 2) as f32,
        }
    }

    /// Adds `weight * Q_k(pos)` to `acc`, `pos` in bins (0 = first bin), linear
    /// interpolation, zero beyond one bin past either end.
    #[inline(always)]
    fn add(&self, k: usize, pos: f32, weight: f32, acc: &mut [f32; N]) {
        let p = (pos + PAD as f32).clamp(0.0, self.max_pos);
        let i = p as usize;
        let f = p - i as f32;
        let base = k * self.stride + i;
        let (v0, v1) = (&self.data[base], &self.data[base + 1]);
        for n in 0..N {
            acc[n] += weight * (v0[n] + f * (v1[n] - v0[n]));
        }
    }
}

/// A reconstructor for one geometry and image grid: filters and per-view tables.
#[derive(Debug)]
pub struct Fbp {
    grid: ImageGrid,
    geometry: Geometry,
    bank: FilterBank,
    /// `(cos, sin)` of each view angle.
    trig: Vec<(f64, f64)>,
    /// Pre-weights per bin (fan beam), applied before filtering.
    preweight: Option<Vec<f32>>,
    atan: Option<AtanTable>,
}

impl std::fmt::Debug for AtanTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtanTable")
            .field("entries", &self.values.len())
            .finish()
    }
}

impl Fbp {
    pub fn new(grid: ImageGrid, geometry: Geometry, filter: Filter) -> Self {
        let step = geometry.angle_step();
        let trig = (0..geometry.views())
            .map(|k| {
                let (s, c) = geometry.angle(k).sin_cos();
                (c, s)
            })
            .collect();
        let (bank, preweight, atan) = match &geometry {
            Geometry::Parallel(g) => (FilterBank::ramp(g.bins, filter, g.pitch, step), None, None),
            Geometry::Fan(g) => {
                let mid = (g.bins as f64 - 1.0) / 2.0;
                match g.detector {
                    Detector::EquiAngular => {
                        let a = g.delta_gamma();
                        let pre = (0..g.bins)
                            .map(|b| (g.sid * ((b as f64 - mid) * a).cos()) as f32)
                            .collect();
                        let w_max = fan_w_max(&grid, g);
                        (
                            FilterBank::equiangular(g.bins, filter, a, step),
                            Some(pre),
                            Some(AtanTable::new(w_max, a, mid)),
                        )
                    }
                    Detector::Flat => {
                        let a = g.iso_pitch();
                        let pre = (0..g.bins)
                            .map(|b| {
                                let s = (b as f64 - mid) * a;
                                (g.sid / g.sid.hypot(s)) as f32
                            })
                            .collect();
                        (
                            FilterBank::ramp(g.bins, filter, a, 0.5 * step),
                            Some(pre),
                            None,
                        )
                    }
                }
            }
        };
        Self {
            grid,
            geometry,
            bank,
            trig,
            preweight,
            atan,
        }
    }

    pub fn grid(&self) -> &ImageGrid {
        &self.grid
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Pre-weights and filters a sinogram (`[views, bins]`) in place.
    pub fn filter(&self, sino: &mut Array2<f32>) {
        assert_eq!(
            sino.dim(),
            (self.geometry.views(), self.geometry.bins()),
            "sinogram does not match the geometry"
        );
        if let Some(w) = &self.preweight {
            sino.rows_mut().into_iter().for_each(|mut row| {
                row.iter_mut().zip(w).for_each(|(v, w)| *v *= w);
            });
        }
        self.bank.apply(sino);
    }

    /// Back-projects a filtered sinogram onto the image grid.
    pub fn backproject(&self, filtered: ArrayView2<f32>) -> Array2<f32> {
        let [out] = self.backproject_n(&[filtered]);
        out
    }

    /// Back-projects two filtered sinograms in one pass (the per-pixel geometry is
    /// computed once for both).
    pub fn backproject_pair(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> [Array2<f32>; 2] {
        self.backproject_n(&[a, b])
    }

    fn backproject_n<const N: usize>(&self, filtered: &[ArrayView2<f32>; N]) -> [Array2<f32>; N] {
        let g = &self.grid;
        for f in filtered {
            assert_eq!(
                f.dim(),
                (self.geometry.views(), self.geometry.bins()),
                "sinogram does not match the geometry"
            );
        }
        let q = Interleaved::new(filtered);
        let mut out = vec![[0.0f32; N]; g.rows * g.cols];
        let (cx, cy) = (g.cx(), g.cy());
        let x0 = -cx * g.dx;
        let views = self.geometry.views();
        let blocks = out.par_chunks_mut(g.cols * ROW_BLOCK).enumerate();
        // Per task: a block of image rows; per view block, each pixel loads its sum
        // once, adds VIEW_BLOCK views from registers, stores once.
        match &self.geometry {
            Geometry::Parallel(p) => {
                let mid = (p.bins as f64 - 1.0) / 2.0;
                blocks.for_each(|(blk, block)| {
                    let mut a = [0.0f32; VIEW_BLOCK];
                    let mut b = [0.0f32; VIEW_BLOCK];
                    for k0 in (0..views).step_by(VIEW_BLOCK) {
                        let kn = VIEW_BLOCK.min(views - k0);
                        for (r, row) in block.chunks_mut(g.cols).enumerate() {
                            let y = (cy - (blk * ROW_BLOCK + r) as f64) * g.dy;
                            for m in 0..kn {
                                let (c, s) = self.trig[k0 + m];
                                // Bin position of pixel j in this row: a + b * j.
                                a[m] = ((y * s + x0 * c) / p.pitch + mid) as f32;
                                b[m] = (g.dx * c / p.pitch) as f32;
                            }
                            for (j, v) in row.iter_mut().enumerate() {
                                let mut acc = *v;
                                for m in 0..kn {
                                    q.add(k0 + m, a[m] + b[m] * j as f32, 1.0, &mut acc);
                                }
                                *v = acc;
                            }
                        }
                    }
                });
            }
            Geometry::Fan(f) => {
                let atan = self.atan.as_ref();
                let mid = (f.bins as f64 - 1.0) / 2.0;
                let flat_scale = (f.sdd / f.pitch) as f32;
                let sid = f.sid;
                let sid2 = (sid * sid) as f32;
                blocks.for_each(|(blk, block)| {
                    let mut u0 = [0.0f32; VIEW_BLOCK];
                    let mut du = [0.0f32; VIEW_BLOCK];
                    let mut t0 = [0.0f32; VIEW_BLOCK];
                    let mut dt = [0.0f32; VIEW_BLOCK];
                    for k0 in (0..views).step_by(VIEW_BLOCK) {
                        let kn = VIEW_BLOCK.min(views - k0);
                        for (r, row) in block.chunks_mut(g.cols).enumerate() {
                            let y = (cy - (blk * ROW_BLOCK + r) as f64) * g.dy;
                            for m in 0..kn {
                                let (c, s) = self.trig[k0 + m];
                                // Along a row, x = x0 + j dx: U = sid - (x c + y s) and
                                // t = -x s + y c are both linear in j.
                                u0[m] = (sid - (x0 * c + y * s)) as f32;
                                du[m] = (-g.dx * c) as f32;
                                t0[m] = (-x0 * s + y * c) as f32;
                                dt[m] = (-g.dx * s) as f32;
                            }
                            match atan {
                                Some(table) => {
                                    for (j, v) in row.iter_mut().enumerate() {
                                        let mut acc = *v;
                                        let jf = j as f32;
                                        for m in 0..kn {
                                            let inv_u = 1.0 / (u0[m] + du[m] * jf);
                                            let t = t0[m] + dt[m] * jf;
                                            let (pos, cos2) = table.lookup(t * inv_u);
                                            // 1 / L^2 = cos^2(gamma) / U^2.
                                            q.add(k0 + m, pos, cos2 * inv_u * inv_u, &mut acc);
                                        }
                                        *v = acc;
                                    }
                                }
                                None => {
                                    let mid = mid as f32;
                                    for (j, v) in row.iter_mut().enumerate() {
                                        let mut acc = *v;
                                        let jf = j as f32;
                                        for m in 0..kn {
                                            let inv_u = 1.0 / (u0[m] + du[m] * jf);
                                            let t = t0[m] + dt[m] * jf;
                                            let pos = t * inv_u * flat_scale + mid;
                                            q.add(k0 + m, pos, sid2 * inv_u * inv_u, &mut acc);
                                        }
                                        *v = acc;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        }
        std::array::from_fn(|n| {
            Array2::from_shape_vec((g.rows, g.cols), out.iter().map(|v| v[n]).collect())
                .expect("rows * cols values")
        })
    }

    /// Filters a copy of `sino` and back-projects it.
    pub fn reconstruct(&self, sino: ArrayView2<f32>) -> Array2<f32> {
        let mut s = sino.to_owned();
        self.filter(&mut s);
        self.backproject(s.view())
    }
}

/// Largest `|t / U|` over the image (plus margin) for a fan geometry.
fn fan_w_max(grid: &ImageGrid, g: &FanGeometry) -> f64 {
    let r = grid.cover_radius();
    (r / (g.sid * g.sid - r * r).sqrt()) * 1.01 + 1e-6
}
