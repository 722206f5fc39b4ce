//! Tensor operations the networks need that Candle 0.11 lacks, all with gradients.
//!
//! - [`pad`]: reflection padding (ONNX `Pad` mode `reflect`), padding an image to a
//!   size by reflection at the bottom and right ([`pad_to_size`],
//!   [`pad_to_multiple`]) and cropping back ([`crop`]).
//! - [`norm`]: instance normalisation (a fused CPU kernel with its own backward,
//!   and the composite reference that runs on any device) and batch
//!   normalisation in both modes.
//! - [`gradcheck`]: finite-difference gradient checks for tests.
//! - [`pool`]: [`pool::on_pool`], a training step run on a thread of rayon's pool
//!   (its convolutions start without waiting for a worker to wake).
//! - [`profile`]: per-op timers of a training step (`bench-step --profile`).
//! - [`rectifier`]: ReLU and leaky ReLU with one-pass backwards (the `fast`
//!   backend's), also applied inside the op before them.
//! - [`storage`]: the contiguous elements of a CPU storage, for the custom ops.
//! - [`simd`]: the CPU's widest vector extension, chosen at run time, for the
//!   kernels' hot loops.
//! - [`conv`]: [`ConvBackend`], the one switch that picks the convolution
//!   implementation of every network (Candle's ops are the reference path).
//! - [`conv_cpu`]: the `fast` backend's CPU convolution kernels (conv2d and
//!   conv_transpose2d, f32 and f64, cache-blocked im2col / col2im and GEMMs)
//!   with their own backward, free of the bug below.
//!
//! # Candle 0.11's stride/parity backward bug
//!
//! The backward of `Tensor::conv2d` computes the input gradient with
//! `conv_transpose2d` and derives its `output_padding` from the height only
//! (`backprop.rs`, `Op::Conv2D`), then uses it for both axes. With stride > 1 and
//! `(H + 2p - k) % stride != (W + 2p - k) % stride` the input gradient comes out
//! one pixel too wide or narrow and backward fails with a shape mismatch. The
//! forward is correct for any size. So: train on square patches or on sizes that
//! are a multiple of [`ldct_proto::arch::Arch::spatial_multiple`] (which keeps every
//! stride-2 layer on even sizes), and run inference on any size by padding to the
//! multiple ([`pad_to_multiple`]) and cropping back. The `fast` backend
//! ([`ConvBackend::Fast`], [`conv_cpu`]) computes its own input gradient and has no
//! such restriction on the CPU.

pub mod conv;
pub mod conv_cpu;
pub mod gradcheck;
pub mod norm;
pub mod pad;
pub mod pool;
pub mod profile;
pub mod rectifier;
pub mod simd;
pub mod storage;

pub use conv::ConvBackend;
pub use norm::{
    batch_norm, batch_stats, instance_norm, instance_norm_rectified, instance_norm_reference,
};
pub use pad::{crop, pad_to_multiple, pad_to_size, reflection_pad2d, zero_pad2d};
pub use rectifier::Rectifier;
