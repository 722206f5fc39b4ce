//! The networks ldct trains, as [`Arch`] graphs.
//!
//! Conventions shared by the presets:
//!
//! - `norm`: `instance` is PyTorch's `InstanceNorm2d` default (no affine
//!   parameters, no running statistics, eps 1e-5), as in CycleGAN;
//!   `instance_affine` adds a per-channel scale and shift; `batch` is
//!   `BatchNorm2d` (eps 1e-5, momentum 0.1); `none` leaves the norm out.
//! - Convolutions followed by a norm have a bias unless the norm is `batch`
//!   (CycleGAN's `use_bias`; a bias before an instance norm is redundant but kept
//!   so parameter counts match the reference implementations); convolutions
//!   without a norm always have one.
//! - Generators (`resnet`, `unet`) end in `y = head(x)`; then `y = tanh(y)` when
//!   `tanh`, then `out = x + y` when `global_residual`. So the default output is
//!   `input + tanh(head(x))`: the network predicts a bounded correction in (-1, 1)
//!   (up to 1000 HU at the default [-1000, 1000] window; a zero head is exactly
//!   the identity), and its output may leave [-1, 1] slightly (denormalisation
//!   does not clip). tanh is applied to the correction, not to the sum, so that the
//!   window's extremes (-1 and 1, e.g. air) stay reachable.
//!
//! Node names (and so parameter names):
//!
//! - resnet: `stem.{pad,conv,norm,relu}`, `down{1,2}.{conv,norm,relu}`,
//!   `blocks.{i}.{pad1,conv1,norm1,relu,pad2,conv2,norm2,add}`,
//!   `up{1,2}.{conv,norm,relu}`, `head.{pad,conv,tanh}`, `residual`.
//! - unet: `enc0.{conv1,norm1,relu1,conv2,norm2,relu2}`,
//!   `enc{l}.{down,norm1,relu1,conv2,norm2,relu2}` for `l = 1..=depth`,
//!   `dec{l}.{up,norm_up,relu_up,cat,conv1,norm1,relu1,conv2,norm2,relu2}` for
//!   `l = depth..=1`, `head.{conv,tanh}`, `residual`.
//! - patchgan: `layer0.{conv,lrelu}`, `layer{i}.{conv,norm,lrelu}`, `head.conv`.
//! - redcnn: `conv{1..5}`, `relu{1..5}`, `tconv{1..5}`, `relu{6..9}`,
//!   `skip{1,2}` and `residual`.

use serde::{Deserialize, Serialize};

use super::{Arch, ArchError, Node, Op, UpsampleMode, ARCH_SCHEMA_VERSION, INPUT};

const NORM_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Normalisation layer of a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// No normalisation.
    None,
    /// Instance norm without affine parameters (CycleGAN).
    #[default]
    Instance,
    /// Instance norm with per-channel scale and shift.
    InstanceAffine,
    /// Batch norm with running statistics.
    Batch,
}

impl Norm {
    /// Whether a convolution followed by this norm has a bias.
    fn conv_bias(self) -> bool {
        !matches!(self, Norm::Batch)
    }

    fn op(self, channels: usize) -> Option<Op> {
        match self {
            Norm::None => None,
            Norm::Instance | Norm::InstanceAffine => Some(Op::InstanceNorm {
                channels,
                eps: NORM_EPS,
                affine: self == Norm::InstanceAffine,
            }),
            Norm::Batch => Some(Op::BatchNorm {
                channels,
                eps: NORM_EPS,
                momentum: BN_MOMENTUM,
            }),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Norm::None => "no norm",
            Norm::Instance => "instance norm",
            Norm::InstanceAffine => "affine instance norm",
            Norm::Batch => "batch norm",
        }
    }
}

/// The CycleGAN ResNet generator (Johnson et al. / Zhu et al.):
///
/// ```text
/// reflection pad 3, conv 7x7 (ngf), norm, ReLU
/// 2x [conv 3x3 stride 2 padding 1 (channels doubled), norm, ReLU]
/// n_blocks x [reflection pad 1, conv 3x3, norm, ReLU, reflection pad 1, conv 3x3, norm, + block input]
/// 2x [transposed conv 3x3 stride 2 padding 1 output_padding 1 (channels halved), norm, ReLU]
/// reflection pad 3, conv 7x7 (out channels), [tanh], [+ input]
/// ```
///
/// With `upsample = "resize"` each transposed convolution is a nearest-neighbour
/// 2x upsampling followed by reflection pad 1 and conv 3x3 (channels halved): the
/// resize-convolution of Odena et al. 2016 ("Deconvolution and checkerboard
/// artifacts"), whose every output pixel sees the same number of kernel taps, so it
/// cannot print the stride's grid on the image the way a stride-2 transposed
/// convolution with a 3x3 kernel can. But all four pixels of each 2x2 block then
/// come from one trunk pixel through the same kernel, so the way back cannot make
/// pixel-scale, position-dependent output (what a denoiser's correction is).
///
/// With `upsample = "pixelshuffle"` each transposed convolution is reflection pad 1,
/// conv 3x3 to 4x the halved channels and a pixel shuffle by 2 (the sub-pixel
/// convolution of Shi et al. 2016): each pixel of a 2x2 block has its own kernel,
/// like the transposed convolution's, and the trainer initialises the four alike
/// (ICNR, Aitken et al. 2017), so at the start it is a resize-convolution and has no
/// checkerboard to unlearn.
///
/// Spatial multiple 4, minimum size 8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResnetConfig {
    /// Filters of the first layer (64 in CycleGAN).
    pub ngf: usize,
    /// Residual blocks (9 in CycleGAN's `resnet_9blocks`).
    pub n_blocks: usize,
    pub norm: Norm,
    /// Apply tanh to the head's output.
    pub tanh: bool,
    /// Add the input to the output.
    pub global_residual: bool,
    /// How the trunk returns to full resolution: `transposed` (CycleGAN's) or
    /// `resize` (nearest 2x + conv 3x3). Left out of the JSON when `transposed`,
    /// so architectures written before it existed stay byte for byte the same.
    #[serde(skip_serializing_if = "Upsampling::is_transposed")]
    pub upsample: Upsampling,
    /// Add the stem's full-resolution features (after its ReLU) to the last
    /// upsampling stage's output, before the head: a long skip, the one
    /// full-resolution path into the head besides the global residual. Without it
    /// every pixel-scale detail (what a denoiser's correction is) must pass the
    /// quarter-resolution trunk. Not in CycleGAN's generator. Default false, left out
    /// of the JSON when false (architectures written before it stay the same).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub long_skip: bool,
}

/// The ResNet generator's way back to full resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Upsampling {
    /// Transposed convolution 3x3, stride 2 (CycleGAN).
    #[default]
    Transposed,
    /// Nearest-neighbour 2x upsampling, reflection pad 1, conv 3x3.
    Resize,
    /// Reflection pad 1, conv 3x3 to 4x the channels, pixel shuffle by 2 (ICNR init).
    PixelShuffle,
}

impl Upsampling {
    fn is_transposed(&self) -> bool {
        *self == Upsampling::Transposed
    }
}

impl Default for ResnetConfig {
    fn default() -> Self {
        Self {
            ngf: 64,
            n_blocks: 9,
            norm: Norm::Instance,
            tanh: true,
            global_residual: true,
            upsample: Upsampling::Transposed,
            long_skip: false,
        }
    }
}

/// A depth-configurable U-Net generator:
///
/// ```text
/// enc0: conv 3x3 (base), norm, ReLU, conv 3x3, norm, ReLU
/// enc{l}, l = 1..=depth: conv 3x3 stride 2 padding 1 (channels doubled), norm, ReLU,
///                        conv 3x3, norm, ReLU
/// dec{l}, l = depth..=1: transposed conv 3x3 stride 2 padding 1 output_padding 1
///                        (channels halved), norm, ReLU, concat with enc{l-1},
///                        conv 3x3, norm, ReLU, conv 3x3, norm, ReLU
/// head: conv 1x1 (out channels), [tanh], [+ input]
/// ```
///
/// All 3x3 convolutions use zero padding 1. Channels at level `l` are
/// `base * 2^l`. Spatial multiple `2^depth`.
///
/// With `noise_map` the network is conditioned on a noise level (FFDNet-style): the
/// input has one more channel, a constant map of the slice's noise level in the
/// normalised range, after the image channels; the global residual adds the image
/// channels only (an `image` node selecting them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnetConfig {
    /// Filters of the first level.
    pub base: usize,
    /// Number of stride-2 downsamplings.
    pub depth: usize,
    pub norm: Norm,
    /// Apply tanh to the head's output.
    pub tanh: bool,
    /// Add the input to the output.
    pub global_residual: bool,
    /// Take a noise-level map as an extra input channel (see above).
    pub noise_map: bool,
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            base: 32,
            depth: 4,
            norm: Norm::Instance,
            tanh: true,
            global_residual: true,
            noise_map: false,
        }
    }
}

/// The PatchGAN discriminator of pix2pix / CycleGAN (70x70 receptive field with
/// `n_layers = 3`):
///
/// ```text
/// layer0: conv 4x4 stride 2 padding 1 (ndf), LeakyReLU 0.2          (no norm)
/// layer{i}, i = 1..n_layers: conv 4x4 stride 2 padding 1 (ndf * min(2^i, 8)), norm, LeakyReLU 0.2
/// layer{n_layers}: conv 4x4 stride 1 padding 1 (ndf * min(2^n_layers, 8)), norm, LeakyReLU 0.2
/// head: conv 4x4 stride 1 padding 1 (1 channel)
/// ```
///
/// A 256x256 input gives a 30x30 map of patch scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchganConfig {
    /// Filters of the first layer.
    pub ndf: usize,
    /// Stride-2 layers (3 for the 70x70 PatchGAN).
    pub n_layers: usize,
    pub norm: Norm,
}

impl Default for PatchganConfig {
    fn default() -> Self {
        Self {
            ndf: 64,
            n_layers: 3,
            norm: Norm::Instance,
        }
    }
}

/// RED-CNN (Chen et al. 2017, "Low-dose CT with a residual encoder-decoder
/// convolutional neural network"): five convolutions and five transposed
/// convolutions, `kernel x kernel`, stride 1, no padding, ReLU, with shortcuts
/// every two layers and from the input to the output:
///
/// ```text
/// c1 = relu(conv1(x)); c2 = relu(conv2(c1)); c3 = relu(conv3(c2)); c4 = relu(conv4(c3))
/// c5 = relu(conv5(c4))
/// s1 = tconv1(c5) + c4
/// t2 = relu(tconv2(relu(s1)));  s2 = tconv3(t2) + c2
/// t4 = relu(tconv4(relu(s2)));  out = tconv5(t4) + x
/// ```
///
/// The paper's final ReLU is left out: ldct's images are normalised to [-1, 1],
/// so a ReLU would clip every value below the window's middle. Spatial multiple 1;
/// H and W must exceed `5 * (kernel - 1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedcnnConfig {
    /// Filters of every hidden layer (96 in the paper).
    pub filters: usize,
    /// Kernel size (5 in the paper).
    pub kernel: usize,
}

impl Default for RedcnnConfig {
    fn default() -> Self {
        Self {
            filters: 96,
            kernel: 5,
        }
    }
}

/// Which network an [`Arch`] is, with its configuration. In JSON and TOML the
/// variant is the `kind` field beside the configuration's fields, e.g.
/// `{"kind": "resnet", "ngf": 32, "n_blocks": 6, "norm": "instance"}`; omitted
/// fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Preset {
    Resnet(ResnetConfig),
    Unet(UnetConfig),
    Patchgan(PatchganConfig),
    Redcnn(RedcnnConfig),
    /// A hand-made graph.
    Custom,
}

impl Preset {
    /// The preset's kind as in JSON (`resnet`, `unet`, `patchgan`, `redcnn`, `custom`).
    pub fn kind(&self) -> &'static str {
        match self {
            Preset::Resnet(_) => "resnet",
            Preset::Unet(_) => "unet",
            Preset::Patchgan(_) => "patchgan",
            Preset::Redcnn(_) => "redcnn",
            Preset::Custom => "custom",
        }
    }

    /// This generator without its image tail (no tanh, no global residual), for
    /// networks that output a residual quantity such as noise or a score; `None`
    /// for presets without those switches.
    pub fn without_image_tail(&self) -> Option<Preset> {
        match self {
            Preset::Resnet(c) => Some(Preset::Resnet(ResnetConfig {
                tanh: false,
                global_residual: false,
                ..c.clone()
            })),
            Preset::Unet(c) => Some(Preset::Unet(UnetConfig {
                tanh: false,
                global_residual: false,
                ..c.clone()
            })),
            _ => None,
        }
    }

    /// A short description of the configuration.
    pub fn describe(&self) -> String {
        match self {
            Preset::Resnet(c) => format!(
                "resnet (ngf {}, {} blocks, {}{}{}{}{})",
                c.ngf,
                c.n_blocks,
                c.norm.label(),
                if c.tanh { ", tanh" } else { "" },
                if c.global_residual {
                    ", global residual"
                } else {
                    ""
                },
                match c.upsample {
                    Upsampling::Transposed => "",
                    Upsampling::Resize => ", resize-convolution",
                    Upsampling::PixelShuffle => ", sub-pixel convolution",
                },
                if c.long_skip { ", long skip" } else { "" }
            ),
            Preset::Unet(c) => format!(
                "unet (base {}, depth {}, {}{}{})",
                c.base,
                c.depth,
                c.norm.label(),
                if c.tanh { ", tanh" } else { "" },
                if c.global_residual {
                    ", global residual"
                } else {
                    ""
                }
            ),
            Preset::Patchgan(c) => format!(
                "patchgan (ndf {}, {} layers, {})",
                c.ndf,
                c.n_layers,
                c.norm.label()
            ),
            Preset::Redcnn(c) => {
                format!("redcnn ({} filters, {}x{})", c.filters, c.kernel, c.kernel)
            }
            Preset::Custom => "custom graph".into(),
        }
    }

    /// Builds the graph for `input_channels` in and `output_channels` out
    /// (patchgan always has one output channel; generators with a global residual
    /// need `input_channels == output_channels`). The result is validated.
    pub fn build(&self, input_channels: usize, output_channels: usize) -> Result<Arch, ArchError> {
        let cfg_err = |m: String| Err(ArchError::Config(m));
        if input_channels == 0 || output_channels == 0 {
            return cfg_err("input and output channels must be at least 1".into());
        }
        let (name, nodes, out_ch) = match self {
            Preset::Resnet(c) => {
                if c.ngf == 0 {
                    return cfg_err("resnet: ngf must be at least 1".into());
                }
                if c.global_residual && input_channels != output_channels {
                    return cfg_err(format!(
                        "resnet: a global residual needs as many output as input channels \
                         ({output_channels} != {input_channels})"
                    ));
                }
                (
                    format!("resnet_ngf{}_{}blocks", c.ngf, c.n_blocks),
                    resnet(c, input_channels, output_channels),
                    output_channels,
                )
            }
            Preset::Unet(c) => {
                if c.base == 0 || c.depth == 0 || c.depth > 8 {
                    return cfg_err("unet: base must be at least 1 and depth in 1..=8".into());
                }
                if c.global_residual && input_channels != output_channels {
                    return cfg_err(format!(
                        "unet: a global residual needs as many output as input channels \
                         ({output_channels} != {input_channels})"
                    ));
                }
                let suffix = if c.noise_map { "_noisemap" } else { "" };
                (
                    format!("unet_base{}_depth{}{suffix}", c.base, c.depth),
                    unet(c, input_channels, output_channels),
                    output_channels,
                )
            }
            Preset::Patchgan(c) => {
                if c.ndf == 0 || c.n_layers == 0 {
                    return cfg_err("patchgan: ndf and n_layers must be at least 1".into());
                }
                (
                    format!("patchgan_ndf{}_{}layers", c.ndf, c.n_layers),
                    patchgan(c, input_channels),
                    1,
                )
            }
            Preset::Redcnn(c) => {
                if c.filters == 0 || c.kernel == 0 {
                    return cfg_err("redcnn: filters and kernel must be at least 1".into());
                }
                if input_channels != output_channels {
                    return cfg_err(format!(
                        "redcnn: the input-to-output shortcut needs as many output as input \
                         channels ({output_channels} != {input_channels})"
                    ));
                }
                (
                    format!("redcnn_f{}_k{}", c.filters, c.kernel),
                    redcnn(c, input_channels),
                    output_channels,
                )
            }
            Preset::Custom => {
                return cfg_err("a custom graph has no builder: write its nodes".into())
            }
        };
        let extra = usize::from(matches!(self, Preset::Unet(c) if c.noise_map));
        let arch = Arch {
            schema_version: ARCH_SCHEMA_VERSION,
            name,
            preset: self.clone(),
            input_channels: input_channels + extra,
            output_channels: out_ch,
            nodes,
        };
        arch.validate()?;
        Ok(arch)
    }
}

/// Appends nodes, each fed by the previous one unless told otherwise.
struct Graph {
    nodes: Vec<Node>,
    norm: Norm,
}

impl Graph {
    fn new(norm: Norm) -> Self {
        Self {
            nodes: Vec::new(),
            norm,
        }
    }

    fn push(&mut self, name: String, op: Op, inputs: &[&str]) -> String {
        self.nodes.push(Node {
            name: name.clone(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        });
        name
    }

    /// A 3x3 transposed convolution with stride 2, padding 1 and output padding 1:
    /// exactly twice the input's height and width.
    fn conv_transpose_x2(
        &mut self,
        name: String,
        input: &str,
        cin: usize,
        cout: usize,
        bias: bool,
    ) -> String {
        self.push(
            name,
            Op::ConvTranspose2d {
                in_channels: cin,
                out_channels: cout,
                kernel: 3,
                stride: 2,
                padding: 1,
                output_padding: 1,
                bias,
            },
            &[input],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: String,
        input: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> String {
        self.push(
            name,
            Op::Conv2d {
                in_channels: cin,
                out_channels: cout,
                kernel,
                stride,
                padding,
                dilation: 1,
                bias,
            },
            &[input],
        )
    }

    /// The norm node (if the preset has one) named `name`, else `input` itself.
    fn norm(&mut self, name: String, input: &str, channels: usize) -> String {
        match self.norm.op(channels) {
            Some(op) => self.push(name, op, &[input]),
            None => input.to_string(),
        }
    }

    fn relu(&mut self, name: String, input: &str) -> String {
        self.push(name, Op::Relu, &[input])
    }

    fn reflect(&mut self, name: String, input: &str, pad: usize) -> String {
        self.push(name, Op::ReflectionPad2d { pad }, &[input])
    }

    /// `[tanh], [+ input]` at the end of a generator.
    /// `[tanh] [+ image]`, the image being the input or, when the input carries
    /// `image_channels` followed by conditioning channels, its first `image_channels`.
    fn generator_tail(
        &mut self,
        head: String,
        tanh: bool,
        global_residual: bool,
        image_channels: Option<usize>,
    ) {
        let mut x = head;
        if tanh {
            x = self.push("head.tanh".into(), Op::Tanh, &[&x]);
        }
        if global_residual {
            let image = match image_channels {
                Some(count) => self.push(
                    "image".into(),
                    Op::SelectChannels { start: 0, count },
                    &[INPUT],
                ),
                None => INPUT.to_string(),
            };
            self.push("residual".into(), Op::Add, &[&image, &x]);
        }
    }
}

fn resnet(c: &ResnetConfig, cin: usize, cout: usize) -> Vec<Node> {
    let mut g = Graph::new(c.norm);
    let bias = c.norm.conv_bias();
    let ngf = c.ngf;
    let x = g.reflect("stem.pad".into(), INPUT, 3);
    let x = g.conv("stem.conv".into(), &x, cin, ngf, 7, 1, 0, bias);
    let x = g.norm("stem.norm".into(), &x, ngf);
    let stem = g.relu("stem.relu".into(), &x);
    let mut x = stem.clone();
    let mut ch = ngf;
    for i in 1..=2 {
        let p = format!("down{i}");
        x = g.conv(format!("{p}.conv"), &x, ch, ch * 2, 3, 2, 1, bias);
        ch *= 2;
        x = g.norm(format!("{p}.norm"), &x, ch);
        x = g.relu(format!("{p}.relu"), &x);
    }
    for b in 0..c.n_blocks {
        let p = format!("blocks.{b}");
        let y = g.reflect(format!("{p}.pad1"), &x, 1);
        let y = g.conv(format!("{p}.conv1"), &y, ch, ch, 3, 1, 0, bias);
        let y = g.norm(format!("{p}.norm1"), &y, ch);
        let y = g.relu(format!("{p}.relu"), &y);
        let y = g.reflect(format!("{p}.pad2"), &y, 1);
        let y = g.conv(format!("{p}.conv2"), &y, ch, ch, 3, 1, 0, bias);
        let y = g.norm(format!("{p}.norm2"), &y, ch);
        x = g.push(format!("{p}.add"), Op::Add, &[&x, &y]);
    }
    for i in 1..=2 {
        let p = format!("up{i}");
        x = match c.upsample {
            Upsampling::Transposed => {
                g.conv_transpose_x2(format!("{p}.conv"), &x, ch, ch / 2, bias)
            }
            Upsampling::Resize => {
                let y = g.push(
                    format!("{p}.resize"),
                    Op::Upsample {
                        scale: 2,
                        mode: UpsampleMode::Nearest,
                    },
                    &[&x],
                );
                let y = g.reflect(format!("{p}.pad"), &y, 1);
                g.conv(format!("{p}.conv"), &y, ch, ch / 2, 3, 1, 0, bias)
            }
            Upsampling::PixelShuffle => {
                let y = g.reflect(format!("{p}.pad"), &x, 1);
                let y = g.conv(format!("{p}.conv"), &y, ch, ch / 2 * 4, 3, 1, 0, bias);
                g.push(format!("{p}.shuffle"), Op::PixelShuffle { scale: 2 }, &[&y])
            }
        };
        ch /= 2;
        x = g.norm(format!("{p}.norm"), &x, ch);
        x = g.relu(format!("{p}.relu"), &x);
    }
    if c.long_skip {
        x = g.push("long_skip".into(), Op::Add, &[&x, &stem]);
    }
    let x = g.reflect("head.pad".into(), &x, 3);
    let x = g.conv("head.conv".into(), &x, ch, cout, 7, 1, 0, true);
    g.generator_tail(x, c.tanh, c.global_residual, None);
    g.nodes
}

fn unet(c: &UnetConfig, image_channels: usize, cout: usize) -> Vec<Node> {
    let cin = image_channels + usize::from(c.noise_map);
    let mut g = Graph::new(c.norm);
    let bias = c.norm.conv_bias();
    let chan = |l: usize| c.base << l;
    let x = g.conv("enc0.conv1".into(), INPUT, cin, chan(0), 3, 1, 1, bias);
    let x = g.norm("enc0.norm1".into(), &x, chan(0));
    let x = g.relu("enc0.relu1".into(), &x);
    let x = g.conv("enc0.conv2".into(), &x, chan(0), chan(0), 3, 1, 1, bias);
    let x = g.norm("enc0.norm2".into(), &x, chan(0));
    let mut x = g.relu("enc0.relu2".into(), &x);
    let mut skips = vec![x.clone()];
    for l in 1..=c.depth {
        let p = format!("enc{l}");
        x = g.conv(format!("{p}.down"), &x, chan(l - 1), chan(l), 3, 2, 1, bias);
        x = g.norm(format!("{p}.norm1"), &x, chan(l));
        x = g.relu(format!("{p}.relu1"), &x);
        x = g.conv(format!("{p}.conv2"), &x, chan(l), chan(l), 3, 1, 1, bias);
        x = g.norm(format!("{p}.norm2"), &x, chan(l));
        x = g.relu(format!("{p}.relu2"), &x);
        skips.push(x.clone());
    }
    for l in (1..=c.depth).rev() {
        let p = format!("dec{l}");
        x = g.conv_transpose_x2(format!("{p}.up"), &x, chan(l), chan(l - 1), bias);
        x = g.norm(format!("{p}.norm_up"), &x, chan(l - 1));
        x = g.relu(format!("{p}.relu_up"), &x);
        x = g.push(format!("{p}.cat"), Op::Concat, &[&x, &skips[l - 1]]);
        x = g.conv(
            format!("{p}.conv1"),
            &x,
            2 * chan(l - 1),
            chan(l - 1),
            3,
            1,
            1,
            bias,
        );
        x = g.norm(format!("{p}.norm1"), &x, chan(l - 1));
        x = g.relu(format!("{p}.relu1"), &x);
        x = g.conv(
            format!("{p}.conv2"),
            &x,
            chan(l - 1),
            chan(l - 1),
            3,
            1,
            1,
            bias,
        );
        x = g.norm(format!("{p}.norm2"), &x, chan(l - 1));
        x = g.relu(format!("{p}.relu2"), &x);
    }
    let x = g.conv("head.conv".into(), &x, chan(0), cout, 1, 1, 0, true);
    g.generator_tail(
        x,
        c.tanh,
        c.global_residual,
        c.noise_map.then_some(image_channels),
    );
    g.nodes
}

fn patchgan(c: &PatchganConfig, cin: usize) -> Vec<Node> {
    let mut g = Graph::new(c.norm);
    let bias = c.norm.conv_bias();
    let lrelu = Op::LeakyRelu { slope: 0.2 };
    let x = g.conv("layer0.conv".into(), INPUT, cin, c.ndf, 4, 2, 1, true);
    let mut x = g.push("layer0.lrelu".into(), lrelu.clone(), &[&x]);
    let mut ch = c.ndf;
    for i in 1..=c.n_layers {
        let p = format!("layer{i}");
        let out = c.ndf * (1usize << i.min(3));
        let stride = if i < c.n_layers { 2 } else { 1 };
        x = g.conv(format!("{p}.conv"), &x, ch, out, 4, stride, 1, bias);
        x = g.norm(format!("{p}.norm"), &x, out);
        x = g.push(format!("{p}.lrelu"), lrelu.clone(), &[&x]);
        ch = out;
    }
    g.conv("head.conv".into(), &x, ch, 1, 4, 1, 1, true);
    g.nodes
}

fn redcnn(c: &RedcnnConfig, cin: usize) -> Vec<Node> {
    let mut g = Graph::new(Norm::None);
    let (f, k) = (c.filters, c.kernel);
    let tconv = |cin: usize, cout: usize| Op::ConvTranspose2d {
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride: 1,
        padding: 0,
        output_padding: 0,
        bias: true,
    };
    let mut x = INPUT.to_string();
    let mut enc = Vec::new();
    for i in 1..=5 {
        let from = if i == 1 { cin } else { f };
        x = g.conv(format!("conv{i}"), &x, from, f, k, 1, 0, true);
        x = g.relu(format!("relu{i}"), &x);
        enc.push(x.clone());
    }
    // enc[1] = c2, enc[3] = c4.
    let x = g.push("tconv1".into(), tconv(f, f), &[&x]);
    let x = g.push("skip1".into(), Op::Add, &[&x, &enc[3]]);
    let x = g.relu("relu6".into(), &x);
    let x = g.push("tconv2".into(), tconv(f, f), &[&x]);
    let x = g.relu("relu7".into(), &x);
    let x = g.push("tconv3".into(), tconv(f, f), &[&x]);
    let x = g.push("skip2".into(), Op::Add, &[&x, &enc[1]]);
    let x = g.relu("relu8".into(), &x);
    let x = g.push("tconv4".into(), tconv(f, f), &[&x]);
    let x = g.relu("relu9".into(), &x);
    let x = g.push("tconv5".into(), tconv(f, cin), &[&x]);
    g.push("residual".into(), Op::Add, &[INPUT, &x]);
    g.nodes
}
