//! ldct-imaging: CT images as data.
//!
//! - [`image`]: [`CtImage`] (one slice in HU) and [`CtVolume`] (a stack of slices).
//! - [`hu`]: Hounsfield units <-> linear attenuation.
//! - [`window`]: HU windows, window/level, normalisation to the network range.
//! - [`npy`], [`dicom`], [`raw`], [`aapm`]: readers and writers.
//! - [`derived`]: the derived DICOM instance of a denoised slice.
//! - [`png`]: 16-bit PNG, windowed previews, labelled comparison strips.
//! - [`pad`]: reflection padding to the model's spatial multiple (the pixel contract).
//! - [`metrics`]: PSNR, SSIM, RMSE in a stated HU window.
//! - [`noise`]: a no-reference noise estimate in HU.

pub mod aapm;
pub mod derived;
pub mod dicom;
pub mod error;
pub mod font;
pub mod hu;
pub mod image;
pub mod metrics;
pub mod noise;
pub mod npy;
pub mod pad;
pub mod png;
pub mod raw;
pub mod read;
pub mod window;

pub use error::{ImagingError, Result};
pub use image::{CtImage, CtVolume};
pub use window::Window;
