//! The convolution implementation behind every network: one switch.
//!
//! [`ConvBackend::Candle`] uses Candle's `conv2d` / `conv_transpose2d` (and so
//! their autograd, including the stride/parity backward bug described in
//! [`crate::nn`]); it is the reference path that faster kernels are tested
//! against. A network picks its backend once
//! ([`crate::model::Network::set_backend`]) and every convolution of its forward
//! pass goes through [`ConvBackend::conv2d`] or [`ConvBackend::conv_transpose2d`].

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which implementation runs the convolutions of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvBackend {
    /// Candle's own ops (any device): the reference path.
    #[default]
    Candle,
}

impl ConvBackend {
    /// Every backend, for tests that compare them.
    pub const ALL: &'static [ConvBackend] = &[ConvBackend::Candle];

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
        let y = match self {
            ConvBackend::Candle => x.conv2d(weight, padding, stride, dilation, 1)?,
        };
        add_bias(y, bias)
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
        let y = match self {
            ConvBackend::Candle => {
                x.conv_transpose2d(weight, padding, output_padding, stride, 1)?
            }
        };
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
        })
    }
}

impl FromStr for ConvBackend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "candle" => Ok(ConvBackend::Candle),
            other => Err(format!(
                "unknown convolution backend `{other}` (known: candle)"
            )),
        }
    }
}
