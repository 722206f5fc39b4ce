//! Forward projection by Joseph's method (P. M. Joseph, "An improved algorithm for
//! reprojecting rays through pixel images", IEEE TMI 1982).
//!
//! Each ray is followed through the image one column at a time (when it runs closer
//! to the x axis than to the y axis, in pixel units) or one row at a time (otherwise).
//! At each column (row) crossing the image is interpolated linearly between the two
//! nearest pixel centres of that column (row), and the samples are summed times the
//! ray length per column (row), `dx / |cos|` (`dy / |sin|`). This is the exact line
//! integral of the image interpolated linearly along the marching direction, with
//! zero outside the image. Rays are independent: views run in parallel (rayon), each
//! writing its own sinogram row, so the result does not depend on the thread count.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::geometry::{Detector, Geometry, ImageGrid};

/// Zero border around the padded image copies, in pixels. Interpolation reads at
/// most one pixel outside the image; the second is headroom for rounding.
const BORDER: usize = 2;

/// An image stored with a zero border, row-major, in two orientations so that both
/// marching directions read memory along rows.
struct Padded {
    /// `[rows + 2B, cols + 2B]`, row-major.
    rows_major: Vec<f32>,
    /// The transpose: `[cols + 2B, rows + 2B]`, row-major.
    cols_major: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Padded {
    fn new(image: ArrayView2<f32>) -> Self {
        let (rows, cols) = image.dim();
        let (pr, pc) = (rows + 2 * BORDER, cols + 2 * BORDER);
        let mut rows_major = vec![0.0f32; pr * pc];
        let mut cols_major = vec![0.0f32; pr * pc];
        for ((i, j), &v) in image.indexed_iter() {
            rows_major[(i + BORDER) * pc + j + BORDER] = v;
            cols_major[(j + BORDER) * pr + i + BORDER] = v;
        }
        Self {
            rows_major,
            cols_major,
            rows,
            cols,
        }
    }
}

/// Sum of `data` along the line `lane(k) = a + b * k` for `k` in `0..steps`, where
/// `k` indexes the marching axis (image columns or rows) and `lane` is the
/// fractional index on the other axis (`lanes` of them), interpolated linearly.
/// `data` is the padded image laid out `[steps + 2B][lanes + 2B]`.
#[inline]
fn march(data: &[f32], steps: usize, lanes: usize, a: f64, b: f64) -> f32 {
    let stride = lanes + 2 * BORDER;
    // Steps whose lane lies strictly inside (-1, lanes): the others read only zeros.
    let (lo, hi) = if b.abs() < 1e-12 {
        if a > -1.0 && a < lanes as f64 {
            (0.0, steps as f64 - 1.0)
        } else {
            return 0.0;
        }
    } else {
        let k1 = (-1.0 - a) / b;
        let k2 = (lanes as f64 - a) / b;
        (k1.min(k2).max(0.0), k1.max(k2).min(steps as f64 - 1.0))
    };
    if lo > hi {
        return 0.0;
    }
    let k_lo = lo.ceil() as usize;
    let k_hi = hi.floor() as usize;
    // Lanes shifted into the padded frame, where they are > -1 (rounding aside,
    // >= -2 + 1), so truncation is floor and never leaves the buffer.
    let (a, b) = ((a + BORDER as f64) as f32, b as f32);
    let sample = |k: usize| {
        let lane = (a + b * k as f32).max(0.0);
        let l0 = lane as usize;
        let w = lane - l0 as f32;
        let idx = (k + BORDER) * stride + l0;
        let v0 = data[idx];
        let v1 = data[idx + 1];
        v0 + w * (v1 - v0)
    };
    // Four partial sums break the floating-point dependency chain.
    let mut acc = [0.0f32; 4];
    let mut k = k_lo;
    while k + 3 <= k_hi {
        for (u, part) in acc.iter_mut().enumerate() {
            *part += sample(k + u);
        }
        k += 4;
    }
    while k <= k_hi {
        acc[0] += sample(k);
        k += 1;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Line integral of the image along the ray `p0 + t * d` (mm, `d` a unit vector).
#[inline]
fn ray_sum(img: &Padded, grid: &ImageGrid, p0: (f64, f64), d: (f64, f64)) -> f32 {
    // Ray in pixel index coordinates: column c = x / dx + cx, row r = cy - y / dy.
    let (cx, cy) = (grid.cx(), grid.cy());
    let c0 = p0.0 / grid.dx + cx;
    let r0 = cy - p0.1 / grid.dy;
    let vc = d.0 / grid.dx;
    let vr = -d.1 / grid.dy;
    if vc.abs() >= vr.abs() {
        // March over columns j: t = (j - c0) / vc, row = r0 + (j - c0) * vr / vc.
        let slope = vr / vc;
        let a = r0 - c0 * slope;
        let len = (1.0 / vc).abs();
        len as f32 * march(&img.cols_major, img.cols, img.rows, a, slope)
    } else {
        let slope = vc / vr;
        let a = c0 - r0 * slope;
        let len = (1.0 / vr).abs();
        len as f32 * march(&img.rows_major, img.rows, img.cols, a, slope)
    }
}

/// A ray: `(start point, unit direction)`, mm.
pub(crate) type Ray = ((f64, f64), (f64, f64));

/// The rays of one view, one per bin.
pub(crate) fn view_rays(geometry: &Geometry, k: usize, out: &mut Vec<Ray>) {
    out.clear();
    let angle = geometry.angle(k);
    let (s, c) = angle.sin_cos();
    match geometry {
        Geometry::Parallel(g) => {
            let mid = (g.bins as f64 - 1.0) / 2.0;
            for b in 0..g.bins {
                let t = (b as f64 - mid) * g.pitch;
                // Points with x cos + y sin = t, running along (-sin, cos).
                out.push(((t * c, t * s), (-s, c)));
            }
        }
        Geometry::Fan(g) => {
            let mid = (g.bins as f64 - 1.0) / 2.0;
            let src = (g.sid * c, g.sid * s);
            // Central ray towards the isocentre, and the detector's lateral direction.
            let centre = (-c, -s);
            let lateral = (-s, c);
            for b in 0..g.bins {
                let (cg, sg) = match g.detector {
                    Detector::EquiAngular => {
                        let gamma = (b as f64 - mid) * g.delta_gamma();
                        (gamma.cos(), gamma.sin())
                    }
                    Detector::Flat => {
                        let u = (b as f64 - mid) * g.pitch;
                        let n = g.sdd.hypot(u);
                        (g.sdd / n, u / n)
                    }
                };
                let d = (
                    cg * centre.0 + sg * lateral.0,
                    cg * centre.1 + sg * lateral.1,
                );
                out.push((src, d));
            }
        }
    }
}

/// Projects an image (linear attenuation per mm) to a sinogram `[views, bins]` of line
/// integrals (dimensionless).
pub fn forward_project(
    image: ArrayView2<f32>,
    grid: &ImageGrid,
    geometry: &Geometry,
) -> Array2<f32> {
    assert_eq!(
        image.dim(),
        (grid.rows, grid.cols),
        "image does not match its grid"
    );
    let img = Padded::new(image);
    let (views, bins) = (geometry.views(), geometry.bins());
    let mut sino = Array2::<f32>::zeros((views, bins));
    sino.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(bins)
        .enumerate()
        .for_each_init(Vec::new, |rays, (k, row)| {
            view_rays(geometry, k, rays);
            for (out, &(p0, d)) in row.iter_mut().zip(rays.iter()) {
                *out = ray_sum(&img, grid, p0, d);
            }
        });
    sino
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::geometry::{FanGeometry, ParallelGeometry};

    /// A uniform disc: every ray's integral is the chord length times mu.
    fn disc(n: usize, radius_px: f64, mu: f32) -> Array2<f32> {
        let c = (n as f64 - 1.0) / 2.0;
        // 8x8 supersampling of the disc's area per pixel.
        Array2::from_shape_fn((n, n), |(i, j)| {
            let mut inside = 0;
            for a in 0..8 {
                for b in 0..8 {
                    let y = i as f64 - c + (a as f64 + 0.5) / 8.0 - 0.5;
                    let x = j as f64 - c + (b as f64 + 0.5) / 8.0 - 0.5;
                    if x.hypot(y) <= radius_px {
                        inside += 1;
                    }
                }
            }
            mu * inside as f32 / 64.0
        })
    }

    #[test]
    fn disc_chords_parallel_and_fan() {
        let n = 96;
        let px = 0.5;
        let grid = ImageGrid::square(n, n, px).unwrap();
        let radius_mm = 30.0 * px;
        let mu = 0.02f32;
        let img = disc(n, 30.0, mu);
        let geoms = [
            Geometry::Parallel(ParallelGeometry {
                views: 8,
                bins: 101,
                pitch: 0.4,
            }),
            Geometry::Fan(FanGeometry {
                views: 8,
                bins: 101,
                pitch: 0.9,
                sid: 300.0,
                sdd: 600.0,
                detector: Detector::EquiAngular,
            }),
            Geometry::Fan(FanGeometry {
                views: 8,
                bins: 101,
                pitch: 0.9,
                sid: 300.0,
                sdd: 600.0,
                detector: Detector::Flat,
            }),
        ];
        for g in &geoms {
            let sino = forward_project(img.view(), &grid, g);
            let mut rays = Vec::new();
            for k in 0..g.views() {
                view_rays(g, k, &mut rays);
                for (b, &(p0, d)) in rays.iter().enumerate() {
                    // Distance of the ray from the centre.
                    let dist = (p0.0 * d.1 - p0.1 * d.0).abs();
                    if dist > 0.7 * radius_mm {
                        continue; // near-tangent rays: the chord is steep in the pixelised edge
                    }
                    let chord = 2.0 * (radius_mm * radius_mm - dist * dist).max(0.0).sqrt();
                    let want = chord as f32 * mu;
                    let got = sino[[k, b]];
                    assert!(
                        (got - want).abs() < 1e-2 * want,
                        "{g:?} view {k} bin {b}: {got} vs {want}"
                    );
                }
                if let Geometry::Parallel(p) = g {
                    // Every parallel view integrates to the image's mass.
                    let mass: f32 = sino.row(k).sum() * p.pitch as f32;
                    let want = img.sum() * (px * px) as f32;
                    assert!(
                        (mass / want - 1.0).abs() < 1e-3,
                        "view {k}: {mass} vs {want}"
                    );
                }
            }
        }
    }
}
