//! The convolution implementation behind every network: one switch.
//!
//! [`ConvBackend::Candle`] uses Candle's `conv2d` / `conv_transpose2d` (and so
//! their autograd, including the stride/parity backward bug described in
//! [`crate::nn`]); it is the reference path that faster kernels are tested
//! against. [`ConvBackend::Fast`] runs the kernels of [`crate::nn::conv_cpu`]
//! (cache-blocked im2col / col2im and GEMMs, with their own backward) on f32 and
//! f64 CPU tensors and falls back to Candle's ops elsewhere (CUDA, half
//! precision). A network picks its backend once
//! ([`crate::model::Network::set_backend`]) and every convolution of its forward
//! pass goes through [`ConvBackend::conv2d`] or [`ConvBackend::conv_transpose2d`].

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::rectifier::{self, Rectifier};
use super::{conv_cpu, norm};

/// Which implementation runs the convolutions of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvBackend {
    /// Candle's own ops (any device): the reference path.
    Candle,
    /// The default. The CPU kernels of [`crate::nn::conv_cpu`] (f32, f64); Candle's ops on
    /// other devices and dtypes.
    #[default]
    Fast,
}

impl ConvBackend {
    /// Every backend, for tests that compare them.
    pub const ALL: &'static [ConvBackend] = &[ConvBackend::Candle, ConvBackend::Fast];

    /// Whether backward works for every input size on this device and dtype
    /// (Candle's conv2d backward fails when a stride-2 layer sees an H and a W
    /// of different parities; the fast kernels do not).
    pub fn any_size_backward(self, device: &Device, dtype: DType) -> bool {
        match self {
            ConvBackend::Candle => false,
            ConvBackend::Fast => device.is_cpu() && matches!(dtype, DType::F32 | DType::F64),
        }
    }

    /// Whether this backend runs its own kernels for `x` (else Candle's).
    fn fast_for(self, x: &Tensor) -> bool {
        self == ConvBackend::Fast && conv_cpu::supports(x)
    }

    /// 2-D convolution: `x [N, Cin, H, W]`, `weight [Cout, Cin, k, k]`,
    /// optional `bias [Cout]`, symmetric zero `padding`.
    pub fn conv2d(
        self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        if self.fast_for(x) {
            return conv_cpu::conv2d(x, weight, bias, stride, padding, dilation);
        }
        let y = x.conv2d(weight, padding, stride, dilation, 1)?;
        add_bias(y, bias)
    }

    /// [`ConvBackend::conv2d`], then [`ConvBackend::rectify`] when `act` is set;
    /// with `fast`, one op ([`conv_cpu::conv2d_rectified`]: no separate tensor or
    /// autograd node).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_then(
        self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        act: Option<Rectifier>,
    ) -> Result<Tensor> {
        let Some(r) = act else {
            return self.conv2d(x, weight, bias, stride, padding, dilation);
        };
        if self.fast_for(x) {
            return conv_cpu::conv2d_rectified(x, weight, bias, stride, padding, dilation, r);
        }
        self.rectify(&self.conv2d(x, weight, bias, stride, padding, dilation)?, r)
    }

    /// [`ConvBackend::conv_transpose2d`], then [`ConvBackend::rectify`] when `act`
    /// is set; with `fast`, one op ([`conv_cpu::conv_transpose2d_rectified`]).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d_then(
        self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
        act: Option<Rectifier>,
    ) -> Result<Tensor> {
        let Some(r) = act else {
            return self.conv_transpose2d(x, weight, bias, stride, padding, output_padding);
        };
        if self.fast_for(x) {
            return conv_cpu::conv_transpose2d_rectified(
                x,
                weight,
                bias,
                stride,
                padding,
                output_padding,
                1,
                r,
            );
        }
        let y = self.conv_transpose2d(x, weight, bias, stride, padding, output_padding)?;
        self.rectify(&y, r)
    }

    /// ReLU or leaky ReLU: with `fast`, the one-pass CPU op of
    /// [`crate::nn::rectifier`] (its backward is one pass too); Candle's otherwise.
    pub fn rectify(self, x: &Tensor, r: Rectifier) -> Result<Tensor> {
        if self.fast_for(x) {
            return rectifier::rectify(x, r);
        }
        r.candle(x)
    }

    /// Instance norm (no affine) then a rectifier: with `fast`, one op
    /// ([`norm::instance_norm_rectified`]: the rectifier applied where the norm
    /// writes, its mask applied inside the norm's backward); otherwise the two.
    pub fn instance_norm_rectified(self, x: &Tensor, eps: f64, r: Rectifier) -> Result<Tensor> {
        if self.fast_for(x) {
            return norm::instance_norm_rectified(x, eps, r);
        }
        self.rectify(&norm::instance_norm(x, eps, None)?, r)
    }

    /// 2-D transposed convolution: `x [N, Cin, H, W]`, `weight [Cin, Cout, k, k]`,
    /// optional `bias [Cout]`; `H' = (H - 1) * stride - 2 * padding + k + output_padding`.
    pub fn conv_transpose2d(
        self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
    ) -> Result<Tensor> {
        if self.fast_for(x) {
            return conv_cpu::conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1);
        }
        let y = x.conv_transpose2d(weight, padding, output_padding, stride, 1)?;
        add_bias(y, bias)
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => {
            let c = b.dim(0)?;
            y.broadcast_add(&b.reshape((1, c, 1, 1))?)
        }
        None => Ok(y),
    }
}

impl fmt::Display for ConvBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConvBackend::Candle => "candle",
            ConvBackend::Fast => "fast",
        })
    }
}

impl FromStr for ConvBackend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "candle" => Ok(ConvBackend::Candle),
            "fast" => Ok(ConvBackend::Fast),
            other => Err(format!(
                "unknown convolution backend `{other}` (known: candle, fast)"
            )),
        }
    }
}
