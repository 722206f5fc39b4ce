//! CPU convolution kernels with their own backward (the `fast` [`ConvBackend`]).
//!
//! [`conv2d`] and [`conv_transpose2d`] are Candle custom ops (f32 and f64 on the
//! CPU; see [`supports`]) whose forward and backward passes are the three GEMM
//! primitives of the private `kernels` module (cache-blocked im2col / col2im and
//! GEMMs; direct loops for layers with few output channels; Winograd F(2x2, 3x3)
//! in the `winograd` module for 3x3 stride-1 layers): for a convolution `x -> y`
//! with weight `W`,
//!
//! | pass                | conv2d                    | conv_transpose2d          |
//! |---------------------|---------------------------|---------------------------|
//! | forward             | `forward(x, W)`           | `data_grad(x, W)`         |
//! | input gradient      | `data_grad(dy, W)`        | `forward(dy, W)`          |
//! | weight gradient     | `weight_grad(x, dy)`      | `weight_grad(dy, x)`      |
//! | bias gradient       | `Σ dy` per channel        | `Σ dy` per channel        |
//!
//! The backward computes only what autograd tracks: no input gradient for an
//! input that is not tracked (the first layer), no weight or bias gradient for
//! detached parameters (a frozen network). Candle's backprop leaves an argument
//! without a gradient when `bwd` returns `None` for it, which is only sound for
//! arguments it does not walk, i.e. exactly those whose `track_op()` is false.
//! The autograd graph keeps `x` and `W` (as for Candle's own convolutions), never
//! a column matrix: the backward gathers the columns again, band by band.
//!
//! The input gradient is computed from the forward's geometry, so it has the
//! input's shape for any size, stride, padding and dilation (no stride/parity
//! bug, see [`crate::nn`]).
//!
//! [`ConvBackend`]: crate::nn::ConvBackend

mod direct;
mod gemm;
mod geom;
mod im2col;
mod kernels;
mod winograd;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use super::rectifier::{self, Rectifier};
use kernels::{Float, Geom};

/// Whether [`conv2d`] and [`conv_transpose2d`] run on this tensor: on the CPU,
/// in f32 or f64.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// 2-D convolution as Candle's `conv2d` with `groups = 1`, plus an optional
/// `bias [c_out]`: `x [n, c_in, h, w]`, `weight [c_out, c_in, kh, kw]`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let op = conv2d_op(x, weight, bias, stride, padding, dilation)?;
    apply(x, weight, bias, op)
}

/// [`conv2d`] followed by a ReLU or leaky ReLU, in one op: the output is
/// rectified where it is written, and the backward scales the output gradient by
/// the slope where the output is not positive (PyTorch's `threshold_backward`;
/// Candle's `relu` lets the gradient through at an input of exactly 0 as well)
/// before the convolution's own backward. One tensor and one autograd node fewer
/// than the two ops.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_rectified(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    r: Rectifier,
) -> Result<Tensor> {
    let op = conv2d_op(x, weight, bias, stride, padding, dilation)?;
    apply(x, weight, bias, ConvOp { act: Some(r), ..op })
}

fn conv2d_op(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<ConvOp> {
    let (n, c_in, h, w) = x.dims4()?;
    let (c_out, c_in_k, kh, kw) = weight.dims4()?;
    if c_in != c_in_k {
        bail!("conv2d: the input has {c_in} channels, the kernel {c_in_k}")
    }
    check_common(x, weight, bias, c_out, kh, kw, stride, dilation)?;
    let out = |len: usize, k: usize| -> Result<usize> {
        let span = dilation * (k - 1) + 1;
        if len + 2 * padding < span {
            bail!(
                "conv2d: a {k}x{k} kernel (dilation {dilation}) does not fit {len} + 2 x {padding}"
            )
        }
        Ok((len + 2 * padding - span) / stride + 1)
    };
    let geom = Geom {
        n,
        c_in,
        h,
        w,
        c_out,
        ho: out(h, kh)?,
        wo: out(w, kw)?,
        kh,
        kw,
        stride,
        padding,
        dilation,
    };
    Ok(ConvOp {
        geom,
        transposed: false,
        act: None,
    })
}

/// 2-D transposed convolution as Candle's `conv_transpose2d`, plus an optional
/// `bias [c_out]`: `x [n, c_in, h, w]`, `weight [c_in, c_out, kh, kw]`,
/// `H' = (h - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let op = conv_transpose2d_op(x, weight, bias, stride, padding, output_padding, dilation)?;
    apply(x, weight, bias, op)
}

/// [`conv_transpose2d`] followed by a rectifier, in one op (as [`conv2d_rectified`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_rectified(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
    r: Rectifier,
) -> Result<Tensor> {
    let op = conv_transpose2d_op(x, weight, bias, stride, padding, output_padding, dilation)?;
    apply(x, weight, bias, ConvOp { act: Some(r), ..op })
}

#[allow(clippy::too_many_arguments)]
fn conv_transpose2d_op(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Result<ConvOp> {
    let (n, c_in, h, w) = x.dims4()?;
    let (c_in_k, c_out, kh, kw) = weight.dims4()?;
    if c_in != c_in_k {
        bail!("conv_transpose2d: the input has {c_in} channels, the kernel {c_in_k}")
    }
    check_common(x, weight, bias, c_out, kh, kw, stride, dilation)?;
    let out = |len: usize, k: usize| -> Result<usize> {
        let full = (len.max(1) - 1) * stride + dilation * (k - 1) + output_padding + 1;
        if len == 0 || full <= 2 * padding {
            bail!("conv_transpose2d: padding {padding} leaves no output of a {len}-pixel axis")
        }
        Ok(full - 2 * padding)
    };
    // The convolution whose input gradient this is: from y (its input A) to x (B).
    let geom = Geom {
        n,
        c_in: c_out,
        h: out(h, kh)?,
        w: out(w, kw)?,
        c_out: c_in,
        ho: h,
        wo: w,
        kh,
        kw,
        stride,
        padding,
        dilation,
    };
    Ok(ConvOp {
        geom,
        transposed: true,
        act: None,
    })
}

#[allow(clippy::too_many_arguments)]
fn check_common(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    dilation: usize,
) -> Result<()> {
    if !supports(x) || !weight.device().same_device(x.device()) || weight.dtype() != x.dtype() {
        bail!(
            "the fast convolution kernels take f32 or f64 CPU tensors of one dtype, got {:?} on {:?} and {:?} on {:?}",
            x.dtype(),
            x.device(),
            weight.dtype(),
            weight.device()
        )
    }
    if stride == 0 || dilation == 0 || kh == 0 || kw == 0 {
        bail!("convolution with stride {stride}, dilation {dilation}, kernel {kh}x{kw}")
    }
    if let Some(b) = bias {
        if b.dims() != [c_out] || b.dtype() != x.dtype() || !b.device().same_device(x.device()) {
            bail!(
                "the bias must be a [{c_out}] {:?} tensor on {:?}, got {:?} {:?}",
                x.dtype(),
                x.device(),
                b.dims(),
                b.dtype()
            )
        }
    }
    Ok(())
}

fn apply(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, op: ConvOp) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

/// The contiguous elements of a storage.
fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    crate::nn::storage::contiguous(s.as_slice::<T>()?, l, "fast convolution", what)
}

/// One of the three primitives on a geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// `(A, K) -> B`.
    Forward,
    /// `(B, K) -> A`.
    DataGrad,
    /// `(A, B) -> K`.
    WeightGrad,
}

impl Pass {
    fn shape(self, g: &Geom) -> Shape {
        match self {
            Pass::Forward => (g.n, g.c_out, g.ho, g.wo).into(),
            Pass::DataGrad => (g.n, g.c_in, g.h, g.w).into(),
            Pass::WeightGrad => (g.c_out, g.c_in, g.kh, g.kw).into(),
        }
    }

    fn run<T: Float>(
        self,
        g: &Geom,
        first: (&CpuStorage, &Layout),
        second: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<Vec<T>> {
        let (p, q) = (
            slice::<T>(first.0, first.1, "the first operand")?,
            slice::<T>(second.0, second.1, "the second operand")?,
        );
        let bias = bias
            .map(|(s, l)| slice::<T>(s, l, "the bias"))
            .transpose()?;
        let (p_len, q_len) = match self {
            Pass::Forward => (g.n * g.a_len(), g.c_out * g.k_len()),
            Pass::DataGrad => (g.n * g.b_len(), g.c_out * g.k_len()),
            Pass::WeightGrad => (g.n * g.a_len(), g.n * g.b_len()),
        };
        if p.len() != p_len || q.len() != q_len {
            bail!(
                "fast convolution {self:?}: operands of {} and {} elements for {g:?}",
                p.len(),
                q.len()
            )
        }
        Ok(match self {
            Pass::Forward => kernels::forward(g, p, q, bias),
            Pass::DataGrad => kernels::data_grad(g, p, q, bias),
            Pass::WeightGrad => kernels::weight_grad(g, p, q),
        })
    }

    fn cpu(
        self,
        g: &Geom,
        first: (&CpuStorage, &Layout),
        second: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match first.0 {
            CpuStorage::F32(_) => CpuStorage::F32(self.run::<f32>(g, first, second, bias)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.run::<f64>(g, first, second, bias)?),
            _ => bail!("the fast convolution kernels take f32 or f64"),
        };
        Ok((out, self.shape(g)))
    }
}

/// A convolution (or transposed convolution) with autograd: `(x, weight)` or
/// `(x, weight, bias)`, followed by a rectifier when `act` is set.
struct ConvOp {
    geom: Geom,
    transposed: bool,
    act: Option<Rectifier>,
}

impl ConvOp {
    fn forward_pass(&self) -> Pass {
        if self.transposed {
            Pass::DataGrad
        } else {
            Pass::Forward
        }
    }

    /// The forward pass, then the rectifier in place when `act` is set.
    fn cpu_forward(
        &self,
        first: (&CpuStorage, &Layout),
        second: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (mut out, shape) = self.forward_pass().cpu(&self.geom, first, second, bias)?;
        if let Some(r) = self.act {
            match &mut out {
                CpuStorage::F32(v) => rectifier::rectify_in_place(v, r),
                CpuStorage::F64(v) => rectifier::rectify_in_place(v, r),
                _ => bail!("the fast convolution kernels take f32 or f64"),
            }
        }
        Ok((out, shape))
    }

    /// The gradients of the tracked arguments; `out` is the op's output (the
    /// rectifier's mask when `act` is set).
    fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if let Some(r) = self.act {
            rectifier::grad_by_output(grad, out, r)?
        } else {
            grad.contiguous()?
        };
        let kernel = |pass| Kernel {
            geom: self.geom,
            pass,
        };
        let dx = if x.track_op() {
            let pass = if self.transposed {
                Pass::Forward
            } else {
                Pass::DataGrad
            };
            Some(grad.apply_op2_no_bwd(weight, &kernel(pass))?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            let k = kernel(Pass::WeightGrad);
            Some(if self.transposed {
                grad.apply_op2_no_bwd(x, &k)?
            } else {
                x.apply_op2_no_bwd(&grad, &k)?
            })
        } else {
            None
        };
        let db = match bias {
            Some(b) if b.track_op() => Some(grad.apply_op1_no_bwd(&ChannelSum)?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match (self.transposed, self.act.is_some()) {
            (true, false) => "ldct-conv-transpose2d",
            (true, true) => "ldct-conv-transpose2d-rectified",
            (false, false) => "ldct-conv2d",
            (false, true) => "ldct-conv2d-rectified",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, weight, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        match (self.transposed, self.act.is_some()) {
            (true, false) => "ldct-conv-transpose2d-bias",
            (true, true) => "ldct-conv-transpose2d-bias-rectified",
            (false, false) => "ldct-conv2d-bias",
            (false, true) => "ldct-conv2d-bias-rectified",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, weight, Some(bias), res, grad)
    }
}

/// One primitive without autograd (the passes of [`ConvOp`]'s backward).
struct Kernel {
    geom: Geom,
    pass: Pass,
}

impl CustomOp2 for Kernel {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "ldct-conv-forward",
            Pass::DataGrad => "ldct-conv-data-grad",
            Pass::WeightGrad => "ldct-conv-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.pass.cpu(&self.geom, (s1, l1), (s2, l2), None)
    }
}

/// `[n, c, h, w] -> [c]`: the sum over samples and positions (a bias gradient).
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "ldct-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(kernels::channel_sums(
                slice::<f32>(s, l, "the gradient")?,
                n,
                c,
                h * w,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(kernels::channel_sums(
                slice::<f64>(s, l, "the gradient")?,
                n,
                c,
                h * w,
            )),
            _ => bail!("the fast channel sum takes f32 or f64"),
        };
        Ok((out, Shape::from(c)))
    }
}
