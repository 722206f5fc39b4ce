//! The network description: a small layer graph with named parameters.
//!
//! One [`Arch`] is the single source of truth for a network. The trainer builds its
//! Candle module from it, the exporter writes the ONNX graph from it, and both use
//! the parameter names of [`Arch::parameters`] (safetensors tensor names and ONNX
//! initializer names are the same strings). Never hand-write a network twice.
//!
//! # The graph
//!
//! - The graph has one input, referred to as [`INPUT`] (`"input"`), a float tensor
//!   `[N, input_channels, H, W]`.
//! - [`Arch::nodes`] is in topological order: a node's inputs are [`INPUT`] or names
//!   of earlier nodes. The **last node is the output** `[N, output_channels, H', W']`.
//! - Every node has a unique name. A node with parameters owns them as
//!   `{node}.weight`, `{node}.bias`, `{node}.running_mean`, `{node}.running_var`
//!   (see [`Op::parameters`]); so parameter names are deterministic strings such as
//!   `blocks.3.conv1.weight`.
//! - Layouts follow PyTorch and ONNX: a convolution weight is
//!   `[out, in, k, k]`, a transposed convolution weight is `[in, out, k, k]`.
//!
//! # Presets
//!
//! [`Preset`] builds the networks ldct trains (see the [`presets`] module docs for
//! the exact layer lists): `resnet` (the CycleGAN generator), `unet`, `patchgan`
//! (the 70x70 discriminator) and `redcnn` (RED-CNN).
//!
//! # Spatial sizes
//!
//! [`Arch::spatial_multiple`] is the factor H and W must be a multiple of (4 for the
//! resnet generator, `2^depth` for unet, `2^n_layers` for patchgan, 1 for redcnn);
//! [`Arch::min_size`] the smallest multiple that fits; [`Arch::padded_size`] the size
//! an arbitrary image is padded to. Inference pads the image by reflection at the
//! bottom and the right to [`Arch::padded_size`] and crops the output back to the
//! top-left `H x W`. [`Arch::infer_shapes`] gives every node's shape for an input
//! size, or an error naming the first node that cannot take it.

pub mod presets;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use presets::{
    Norm, PatchganConfig, Preset, RedcnnConfig, ResnetConfig, UnetConfig, Upsampling,
};

/// Name by which nodes refer to the graph input (the pixel contract's input name).
pub const INPUT: &str = crate::contract::INPUT_NAME;

/// Schema version of the architecture JSON; bumped on incompatible changes.
pub const ARCH_SCHEMA_VERSION: u32 = 1;

/// Errors of building, validating, reading and sizing an architecture.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// The graph is malformed (dangling input, channel mismatch, duplicate name...).
    #[error("invalid architecture: node `{node}`: {reason}")]
    Invalid { node: String, reason: String },
    /// The graph is fine but cannot take an input of this size.
    #[error("an input of {h}x{w} does not fit the architecture at node `{node}`: {reason}")]
    Shape {
        h: usize,
        w: usize,
        node: String,
        reason: String,
    },
    /// A preset configuration is out of range.
    #[error("invalid preset configuration: {0}")]
    Config(String),
    /// The JSON is not an architecture of this schema.
    #[error("architecture JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A network: a preset's configuration and the layer graph built from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// Schema version of this description ([`ARCH_SCHEMA_VERSION`]).
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Human-readable name, e.g. `resnet_ngf64_9blocks`.
    pub name: String,
    /// The preset (and its configuration) the graph was built from;
    /// [`Preset::Custom`] for hand-made graphs.
    pub preset: Preset,
    /// Channels of the input tensor.
    pub input_channels: usize,
    /// Channels of the output tensor (of the last node).
    pub output_channels: usize,
    /// The layers in topological order; the last one is the output.
    pub nodes: Vec<Node>,
}

fn schema_version() -> u32 {
    ARCH_SCHEMA_VERSION
}

/// One layer of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name; the prefix of the node's parameter names.
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// [`INPUT`] or names of earlier nodes. One input for every op except
    /// [`Op::Add`], [`Op::Mul`], [`Op::Div`] (two) and [`Op::Concat`] (two or
    /// more).
    pub inputs: Vec<String>,
}

/// Interpolation of [`Op::Upsample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleMode {
    /// ONNX `Resize` mode `nearest`, `coordinate_transformation_mode = asymmetric`,
    /// `nearest_mode = floor` (each pixel repeated `scale` times).
    Nearest,
    /// ONNX `Resize` mode `linear`, `coordinate_transformation_mode = half_pixel`
    /// (PyTorch `align_corners = false`). Candle has no gradient for it: inference only.
    Bilinear,
}

/// The operation of a node. Tensors are `[N, C, H, W]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// 2-D convolution, square kernel, symmetric zero padding.
    /// Parameters: `weight [out, in, k, k]`, `bias [out]` when `bias`.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        bias: bool,
    },
    /// 2-D transposed convolution (PyTorch `ConvTranspose2d`, ONNX `ConvTranspose`):
    /// `H' = (H - 1) * stride - 2 * padding + kernel + output_padding`.
    /// Parameters: `weight [in, out, k, k]`, `bias [out]` when `bias`.
    ConvTranspose2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        output_padding: usize,
        bias: bool,
    },
    /// Reflection padding of `pad` pixels on all four sides (ONNX `Pad` mode
    /// `reflect`, PyTorch `ReflectionPad2d`): needs `pad < H` and `pad < W`.
    ReflectionPad2d { pad: usize },
    /// Zero padding of `pad` pixels on all four sides.
    ZeroPad2d { pad: usize },
    /// Instance normalisation: per sample and channel, over H and W, biased
    /// variance, `(x - mean) / sqrt(var + eps)`, then `* weight + bias` when `affine`.
    /// Parameters: `weight [C]`, `bias [C]` when `affine`. (ONNX
    /// `InstanceNormalization` always takes a scale and a bias: without `affine`
    /// the writer supplies constant ones and zeros.)
    InstanceNorm {
        channels: usize,
        eps: f64,
        affine: bool,
    },
    /// Batch normalisation (PyTorch `BatchNorm2d`). Training uses the batch
    /// statistics and updates the running ones with
    /// `running = (1 - momentum) * running + momentum * batch` (PyTorch
    /// convention; the unbiased batch variance goes into `running_var`);
    /// inference uses the running statistics.
    /// Parameters: `weight [C]`, `bias [C]` (trainable), `running_mean [C]`,
    /// `running_var [C]` (buffers).
    BatchNorm {
        channels: usize,
        eps: f64,
        momentum: f64,
    },
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `slope * x`.
    LeakyRelu { slope: f64 },
    /// `tanh(x)`.
    Tanh,
    /// Element-wise sum of two inputs of the same shape (skip connections, the
    /// global residual).
    Add,
    /// Concatenation of the inputs along the channel axis (axis 1), in order.
    Concat,
    /// Upsampling of H and W by an integer `scale`.
    Upsample { scale: usize, mode: UpsampleMode },
    /// Channels to space (sub-pixel convolution's rearrangement; PyTorch
    /// `pixel_shuffle`, ONNX `DepthToSpace` mode `CRD`): `[N, C * s * s, H, W]` ->
    /// `[N, C, H * s, W * s]`, input channel `c * s * s + i * s + j` becoming pixel
    /// `(h * s + i, w * s + j)` of output channel `c`.
    PixelShuffle { scale: usize },
    /// `scale * x + shift`, element-wise (one input). ONNX: `Mul` and `Add` with
    /// scalar initialisers (an identity part is left out).
    Affine { scale: f64, shift: f64 },
    /// `exp(x)`, element-wise.
    Exp,
    /// Element-wise product of two inputs of the same shape.
    Mul,
    /// Element-wise quotient `inputs[0] / inputs[1]` of two inputs of the same
    /// shape.
    Div,
    /// Channels `start..start + count` of the input (ONNX `Slice` on axis 1).
    SelectChannels { start: usize, count: usize },
}

fn one() -> usize {
    1
}

/// What a parameter is, for initialisation and for the ONNX writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Convolution kernel or norm scale.
    Weight,
    /// Convolution or norm bias.
    Bias,
    /// Batch norm running mean (a buffer, not trained by gradient).
    RunningMean,
    /// Batch norm running variance (a buffer, not trained by gradient).
    RunningVar,
}

impl ParamKind {
    /// Suffix of the parameter name after the node name.
    pub fn suffix(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::RunningMean => "running_mean",
            ParamKind::RunningVar => "running_var",
        }
    }

    /// Whether the optimiser trains it (false for batch norm running statistics).
    pub fn trainable(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias)
    }
}

/// A named parameter (or buffer) of the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamSpec {
    /// `{node}.{kind suffix}`, e.g. `blocks.3.conv1.weight`: the safetensors and
    /// ONNX initializer name.
    pub name: String,
    /// The node that owns it.
    pub node: String,
    pub kind: ParamKind,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the optimiser trains it.
    pub fn trainable(&self) -> bool {
        self.kind.trainable()
    }
}

/// Shape of one node's output for a given input size (batch axis left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeShape {
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

impl fmt::Display for NodeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.h, self.w)
    }
}

impl Op {
    /// Short lowercase name of the op (as in the JSON `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::ConvTranspose2d { .. } => "conv_transpose2d",
            Op::ReflectionPad2d { .. } => "reflection_pad2d",
            Op::ZeroPad2d { .. } => "zero_pad2d",
            Op::InstanceNorm { .. } => "instance_norm",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Tanh => "tanh",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Upsample { .. } => "upsample",
            Op::PixelShuffle { .. } => "pixel_shuffle",
            Op::Affine { .. } => "affine",
            Op::Exp => "exp",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::SelectChannels { .. } => "select_channels",
        }
    }

    /// The parameters this op owns, as `(kind, shape)` in a fixed order.
    pub fn parameters(&self) -> Vec<(ParamKind, Vec<usize>)> {
        match *self {
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let mut p = vec![(
                    ParamKind::Weight,
                    vec![out_channels, in_channels, kernel, kernel],
                )];
                if bias {
                    p.push((ParamKind::Bias, vec![out_channels]));
                }
                p
            }
            Op::ConvTranspose2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let mut p = vec![(
                    ParamKind::Weight,
                    vec![in_channels, out_channels, kernel, kernel],
                )];
                if bias {
                    p.push((ParamKind::Bias, vec![out_channels]));
                }
                p
            }
            Op::InstanceNorm {
                channels,
                affine: true,
                ..
            } => vec![
                (ParamKind::Weight, vec![channels]),
                (ParamKind::Bias, vec![channels]),
            ],
            Op::BatchNorm { channels, .. } => vec![
                (ParamKind::Weight, vec![channels]),
                (ParamKind::Bias, vec![channels]),
                (ParamKind::RunningMean, vec![channels]),
                (ParamKind::RunningVar, vec![channels]),
            ],
            _ => Vec::new(),
        }
    }

    /// Number of inputs the op takes: `(min, max)`.
    fn arity(&self) -> (usize, usize) {
        match self {
            Op::Add | Op::Mul | Op::Div => (2, 2),
            Op::Concat => (2, usize::MAX),
            _ => (1, 1),
        }
    }

    /// The downsampling factor the op applies as a fraction `(num, den)`:
    /// H_out ~ H_in * den / num.
    fn scale_fraction(&self) -> (u64, u64) {
        match *self {
            Op::Conv2d { stride, .. } => (stride as u64, 1),
            Op::ConvTranspose2d { stride, .. } => (1, stride as u64),
            Op::Upsample { scale, .. } | Op::PixelShuffle { scale } => (1, scale as u64),
            _ => (1, 1),
        }
    }
}

impl Arch {
    /// Builds a preset with one input and one output channel (ldct's CT slices).
    pub fn from_preset(preset: &Preset) -> Result<Arch, ArchError> {
        preset.build(1, 1)
    }

    /// The node named `name`, if any.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Name of the output node (the last one).
    pub fn output_node(&self) -> &str {
        self.nodes.last().map(|n| n.name.as_str()).unwrap_or(INPUT)
    }

    /// Every parameter and buffer, in graph order, with its name and shape.
    pub fn parameters(&self) -> Vec<ParamSpec> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.op
                    .parameters()
                    .into_iter()
                    .map(move |(kind, shape)| ParamSpec {
                        name: format!("{}.{}", node.name, kind.suffix()),
                        node: node.name.clone(),
                        kind,
                        shape,
                    })
            })
            .collect()
    }

    /// Number of trainable scalars (batch norm running statistics excluded, as
    /// PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub fn parameter_count(&self) -> usize {
        self.parameters()
            .iter()
            .filter(|p| p.trainable())
            .map(ParamSpec::numel)
            .sum()
    }

    /// Checks the graph: unique names, inputs that refer to the graph input or to
    /// earlier nodes, the right number of inputs per op, channel counts that agree,
    /// valid hyper-parameters, and the declared output channels.
    pub fn validate(&self) -> Result<(), ArchError> {
        self.channels().map(|_| ())
    }

    /// Output channels of every node (validating the graph on the way).
    fn channels(&self) -> Result<Vec<usize>, ArchError> {
        let invalid = |node: &str, reason: String| ArchError::Invalid {
            node: node.to_string(),
            reason,
        };
        if self.input_channels == 0 {
            return Err(invalid(INPUT, "input_channels must be at least 1".into()));
        }
        if self.nodes.is_empty() {
            return Err(invalid(INPUT, "the graph has no nodes".into()));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut channels = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let name = node.name.as_str();
            if name.is_empty() || name == INPUT || name.contains(char::is_whitespace) {
                return Err(invalid(
                    name,
                    format!("node names must be non-empty, without spaces and not `{INPUT}`"),
                ));
            }
            if index.insert(name, i).is_some() {
                return Err(invalid(name, "duplicate node name".into()));
            }
            let (lo, hi) = node.op.arity();
            if node.inputs.len() < lo || node.inputs.len() > hi {
                return Err(invalid(
                    name,
                    format!(
                        "{} takes {} input(s), got {}",
                        node.op.kind(),
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("at least {lo}")
                        },
                        node.inputs.len()
                    ),
                ));
            }
            let mut in_ch = Vec::with_capacity(node.inputs.len());
            for input in &node.inputs {
                if input == INPUT {
                    in_ch.push(self.input_channels);
                } else {
                    match index.get(input.as_str()) {
                        Some(&j) if j < i => in_ch.push(channels[j]),
                        _ => {
                            return Err(invalid(
                                name,
                                format!("input `{input}` is neither `{INPUT}` nor an earlier node"),
                            ))
                        }
                    }
                }
            }
            let c = in_ch[0];
            let positive = |what: &str, v: usize| {
                if v == 0 {
                    Err(invalid(name, format!("{what} must be at least 1")))
                } else {
                    Ok(())
                }
            };
            let expect_in = |expected: usize| {
                if expected != c {
                    Err(invalid(
                        name,
                        format!(
                            "expects {expected} input channels, its input `{}` has {c}",
                            node.inputs[0]
                        ),
                    ))
                } else {
                    Ok(())
                }
            };
            let out = match node.op {
                Op::Conv2d {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    dilation,
                    ..
                } => {
                    positive("out_channels", out_channels)?;
                    positive("kernel", kernel)?;
                    positive("stride", stride)?;
                    positive("dilation", dilation)?;
                    expect_in(in_channels)?;
                    out_channels
                }
                Op::ConvTranspose2d {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    output_padding,
                    ..
                } => {
                    positive("out_channels", out_channels)?;
                    positive("kernel", kernel)?;
                    positive("stride", stride)?;
                    if output_padding >= stride {
                        return Err(invalid(
                            name,
                            format!(
                                "output_padding ({output_padding}) must be smaller than stride ({stride})"
                            ),
                        ));
                    }
                    expect_in(in_channels)?;
                    out_channels
                }
                Op::InstanceNorm { channels, eps, .. } => {
                    if !(eps > 0.0 && eps.is_finite()) {
                        return Err(invalid(name, format!("eps must be positive, got {eps}")));
                    }
                    expect_in(channels)?;
                    channels
                }
                Op::BatchNorm {
                    channels,
                    eps,
                    momentum,
                } => {
                    if !(eps > 0.0 && eps.is_finite()) {
                        return Err(invalid(name, format!("eps must be positive, got {eps}")));
                    }
                    if !(0.0..=1.0).contains(&momentum) {
                        return Err(invalid(
                            name,
                            format!("momentum must be in [0, 1], got {momentum}"),
                        ));
                    }
                    expect_in(channels)?;
                    channels
                }
                Op::LeakyRelu { slope } => {
                    if !slope.is_finite() {
                        return Err(invalid(name, "slope must be finite".into()));
                    }
                    c
                }
                Op::Upsample { scale, .. } => {
                    positive("scale", scale)?;
                    c
                }
                Op::PixelShuffle { scale } => {
                    positive("scale", scale)?;
                    if c % (scale * scale) != 0 {
                        return Err(invalid(
                            name,
                            format!(
                                "a pixel shuffle by {scale} needs a multiple of {} channels, `{}` has {c}",
                                scale * scale,
                                node.inputs[0]
                            ),
                        ));
                    }
                    c / (scale * scale)
                }
                Op::Affine { scale, shift } => {
                    if !(scale.is_finite() && shift.is_finite()) {
                        return Err(invalid(name, "scale and shift must be finite".into()));
                    }
                    c
                }
                Op::ReflectionPad2d { .. }
                | Op::ZeroPad2d { .. }
                | Op::Relu
                | Op::Tanh
                | Op::Exp => c,
                Op::Add | Op::Mul | Op::Div => {
                    if in_ch[1] != c {
                        return Err(invalid(
                            name,
                            format!(
                                "{} `{}` ({c} channels) and `{}` ({} channels): element-wise \
                                 ops need equal shapes",
                                node.op.kind(),
                                node.inputs[0],
                                node.inputs[1],
                                in_ch[1]
                            ),
                        ));
                    }
                    c
                }
                Op::Concat => in_ch.iter().sum(),
                Op::SelectChannels { start, count } => {
                    positive("count", count)?;
                    if start + count > c {
                        return Err(invalid(
                            name,
                            format!(
                                "selects channels {start}..{} of `{}`, which has {c}",
                                start + count,
                                node.inputs[0]
                            ),
                        ));
                    }
                    count
                }
            };
            channels.push(out);
        }
        let last = *channels.last().expect("non-empty");
        if last != self.output_channels {
            return Err(invalid(
                self.output_node(),
                format!(
                    "the output node has {last} channels, the architecture declares {}",
                    self.output_channels
                ),
            ));
        }
        Ok(channels)
    }

    /// Shape of every node's output (same order as [`Arch::nodes`]) for an input
    /// of `h x w`, or an error naming the first node that cannot take it.
    pub fn infer_shapes(&self, h: usize, w: usize) -> Result<Vec<NodeShape>, ArchError> {
        let channels = self.channels()?;
        let err = |node: &str, reason: String| ArchError::Shape {
            h,
            w,
            node: node.to_string(),
            reason,
        };
        if h == 0 || w == 0 {
            return Err(err(INPUT, "the input is empty".into()));
        }
        let input = NodeShape {
            channels: self.input_channels,
            h,
            w,
        };
        let mut shapes: Vec<NodeShape> = Vec::with_capacity(self.nodes.len());
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let get = |r: &str| -> NodeShape {
                if r == INPUT {
                    input
                } else {
                    shapes[index[r]]
                }
            };
            let s = get(&node.inputs[0]);
            let name = node.name.as_str();
            let (oh, ow) = match node.op {
                Op::Conv2d {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    ..
                } => {
                    let span = dilation * (kernel - 1) + 1;
                    if s.h + 2 * padding < span || s.w + 2 * padding < span {
                        return Err(err(
                            name,
                            format!(
                                "a {kernel}x{kernel} convolution (padding {padding}, dilation \
                                 {dilation}) needs at least {}x{} pixels, gets {}x{}",
                                span.saturating_sub(2 * padding).max(1),
                                span.saturating_sub(2 * padding).max(1),
                                s.h,
                                s.w
                            ),
                        ));
                    }
                    (
                        (s.h + 2 * padding - span) / stride + 1,
                        (s.w + 2 * padding - span) / stride + 1,
                    )
                }
                Op::ConvTranspose2d {
                    kernel,
                    stride,
                    padding,
                    output_padding,
                    ..
                } => {
                    let full = |x: usize| (x - 1) * stride + kernel + output_padding;
                    if full(s.h) <= 2 * padding || full(s.w) <= 2 * padding {
                        return Err(err(
                            name,
                            format!(
                                "a transposed convolution with padding {padding} gets only {}x{} pixels",
                                s.h, s.w
                            ),
                        ));
                    }
                    (full(s.h) - 2 * padding, full(s.w) - 2 * padding)
                }
                Op::ReflectionPad2d { pad } => {
                    if pad >= s.h || pad >= s.w {
                        return Err(err(
                            name,
                            format!(
                                "reflection padding of {pad} needs more than {pad} pixels per side, gets {}x{}",
                                s.h, s.w
                            ),
                        ));
                    }
                    (s.h + 2 * pad, s.w + 2 * pad)
                }
                Op::ZeroPad2d { pad } => (s.h + 2 * pad, s.w + 2 * pad),
                Op::Upsample { scale, .. } | Op::PixelShuffle { scale } => {
                    (s.h * scale, s.w * scale)
                }
                Op::Add | Op::Mul | Op::Div | Op::Concat => {
                    for r in &node.inputs[1..] {
                        let o = get(r);
                        if (o.h, o.w) != (s.h, s.w) {
                            return Err(err(
                                name,
                                format!(
                                    "joins `{}` ({}x{}) with `{r}` ({}x{})",
                                    node.inputs[0], s.h, s.w, o.h, o.w
                                ),
                            ));
                        }
                    }
                    (s.h, s.w)
                }
                Op::InstanceNorm { .. }
                | Op::BatchNorm { .. }
                | Op::Relu
                | Op::LeakyRelu { .. }
                | Op::Tanh
                | Op::Affine { .. }
                | Op::SelectChannels { .. }
                | Op::Exp => (s.h, s.w),
            };
            index.insert(name, i);
            shapes.push(NodeShape {
                channels: channels[i],
                h: oh,
                w: ow,
            });
        }
        Ok(shapes)
    }

    /// Shape of the output for an input of `h x w`.
    pub fn output_shape(&self, h: usize, w: usize) -> Result<NodeShape, ArchError> {
        Ok(*self
            .infer_shapes(h, w)?
            .last()
            .expect("validated graphs have nodes"))
    }

    /// Whether the output has the input's H and W (image-to-image networks).
    pub fn preserves_size(&self) -> bool {
        let m = self.spatial_multiple();
        (1..=64).any(|k| {
            let s = k * m;
            matches!(self.output_shape(s, s + m), Ok(o) if (o.h, o.w) == (s, s + m))
        })
    }

    /// H and W must be a multiple of this: the largest cumulative stride of the
    /// graph (4 for the resnet generator, `2^depth` for unet, `2^n_layers` for
    /// patchgan, 1 for redcnn). With H and W multiples of it, every stride-2
    /// convolution sees even sizes, which also keeps training clear of Candle's
    /// stride/parity backward bug.
    pub fn spatial_multiple(&self) -> usize {
        // Cumulative downsampling factor of each node as a fraction num/den.
        let mut factor: HashMap<&str, (u64, u64)> = HashMap::new();
        factor.insert(INPUT, (1, 1));
        let mut multiple: u64 = 1;
        for node in &self.nodes {
            let (mut num, mut den) = node
                .inputs
                .iter()
                .filter_map(|r| factor.get(r.as_str()).copied())
                .max_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))
                .unwrap_or((1, 1));
            let (n, d) = node.op.scale_fraction();
            num *= n;
            den *= d;
            let g = gcd(num, den);
            num /= g;
            den /= g;
            multiple = lcm(multiple, num);
            factor.insert(node.name.as_str(), (num, den));
        }
        multiple as usize
    }

    /// The smallest square size (a multiple of [`Arch::spatial_multiple`]) that
    /// the graph accepts, `None` if none up to 4096 does.
    pub fn min_size(&self) -> Option<usize> {
        let m = self.spatial_multiple();
        (1..=4096 / m)
            .map(|k| k * m)
            .find(|&s| self.output_shape(s, s).is_ok())
    }

    /// The size an `h x w` image is padded to before the forward pass: each side
    /// rounded up to [`Arch::spatial_multiple`] and to at least [`Arch::min_size`].
    pub fn padded_size(&self, h: usize, w: usize) -> Result<(usize, usize), ArchError> {
        let (ph, pw) = self.padding(h, w)?.padded_size(h, w);
        self.output_shape(ph, pw)?;
        Ok((ph, pw))
    }

    /// The padding rule of the pixel contract for this graph: its spatial multiple and
    /// minimum size (`h x w` only names the image in the error).
    pub fn padding(&self, h: usize, w: usize) -> Result<crate::contract::Padding, ArchError> {
        let min = self.min_size().ok_or_else(|| ArchError::Shape {
            h,
            w,
            node: INPUT.into(),
            reason: "no input size up to 4096 fits the architecture".into(),
        })?;
        Ok(crate::contract::Padding::new(self.spatial_multiple(), min))
    }

    /// Multiply-accumulate operations of one forward pass on one `h x w` image
    /// (convolutions only: element-wise ops, norms and activations count 0;
    /// FLOPs are about twice this).
    pub fn macs(&self, h: usize, w: usize) -> Result<u64, ArchError> {
        let shapes = self.infer_shapes(h, w)?;
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut total = 0u64;
        for (node, out) in self.nodes.iter().zip(&shapes) {
            match node.op {
                Op::Conv2d {
                    in_channels,
                    out_channels,
                    kernel,
                    ..
                } => total += (out.h * out.w * out_channels * in_channels * kernel * kernel) as u64,
                Op::ConvTranspose2d {
                    in_channels,
                    out_channels,
                    kernel,
                    ..
                } => {
                    let (ih, iw) = match node.inputs[0].as_str() {
                        INPUT => (h, w),
                        r => (shapes[index[r]].h, shapes[index[r]].w),
                    };
                    total += (ih * iw * in_channels * out_channels * kernel * kernel) as u64
                }
                _ => {}
            }
        }
        Ok(total)
    }

    /// One line describing the network, e.g. for a model card:
    /// `resnet_ngf64_9blocks: resnet (ngf 64, 9 blocks, instance norm), 1->1 channels, 11.37M parameters`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {}, {}->{} channels, {:.2}M parameters",
            self.name,
            self.preset.describe(),
            self.input_channels,
            self.output_channels,
            self.parameter_count() as f64 / 1e6
        )
    }

    /// The nodes with every node name, and every input other than [`INPUT`],
    /// renamed to `{prefix}.{name}`; [`INPUT`] stays as is. Parameter names so
    /// become `{prefix}.{param}`. Graphs made of several networks are
    /// [`Preset::Custom`] architectures built from such prefixed node lists plus
    /// nodes that combine them.
    pub fn prefixed_nodes(&self, prefix: &str) -> Vec<Node> {
        let rename = |r: &str| {
            if r == INPUT {
                INPUT.to_string()
            } else {
                format!("{prefix}.{r}")
            }
        };
        self.nodes
            .iter()
            .map(|n| Node {
                name: format!("{prefix}.{}", n.name),
                op: n.op.clone(),
                inputs: n.inputs.iter().map(|r| rename(r)).collect(),
            })
            .collect()
    }

    /// Pretty JSON (the `arch.json` of a run folder).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an Arch always serialises")
    }

    /// Reads and validates an architecture JSON.
    pub fn from_json(json: &str) -> Result<Arch, ArchError> {
        let arch: Arch = serde_json::from_str(json)?;
        if arch.schema_version != ARCH_SCHEMA_VERSION {
            return Err(ArchError::Invalid {
                node: INPUT.into(),
                reason: format!(
                    "architecture schema version {} is not supported (expected {ARCH_SCHEMA_VERSION})",
                    arch.schema_version
                ),
            });
        }
        arch.validate()?;
        Ok(arch)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests;
