//! ldct-imaging: CT images as data.
//!
//! - [`image`]: [`CtImage`] (one slice in HU) and [`CtVolume`] (a stack of slices).
//! - [`hu`]: Hounsfield units <-> linear attenuation.
//! - [`window`]: HU windows, window/level, normalisation to the network range.
//! - [`npy`], [`dicom`], [`raw`], [`inv3`], [`nifti`], [`nrrd`], [`aapm`]: readers and
//!   writers; [`sample`]: the numeric sample decoder they share; [`orient`]: turning
//!   volumes in patient coordinates to the radiological display orientation.
//! - [`derived`]: the derived DICOM instance of a denoised slice.
//! - [`instance`]: a received DICOM instance as a single-frame CT slice to denoise
//!   (checks, UIDs, the loop guard against ldct's own output).
//! - [`png`]: 16-bit PNG, windowed previews, labelled comparison strips.
//! - [`metrics`]: PSNR, SSIM, RMSE in a stated HU window.
//! - [`noise`]: a no-reference noise estimate in HU.

pub mod aapm;
pub mod derived;
pub mod dicom;
pub mod error;
pub mod font;
pub mod hu;
pub mod image;
pub mod instance;
pub mod inv3;
pub mod limits;
pub mod metrics;
pub mod nifti;
pub mod noise;
pub mod npy;
pub mod nrrd;
pub mod orient;
pub mod png;
pub mod raw;
pub mod read;
pub mod sample;
pub mod untrusted;
pub mod window;

pub use error::{ImagingError, Result};
pub use image::{CtImage, CtVolume};
pub use window::Window;
