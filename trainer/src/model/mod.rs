//! Candle networks built from [`ldct_proto::arch::Arch`].
//!
//! A [`Network`] owns one Candle [`Var`] per parameter of the architecture, named
//! exactly as [`Arch::parameters`] names them (the safetensors names and the ONNX
//! initializer names), and its forward pass walks the architecture's graph. The
//! convolutions go through one [`ConvBackend`]; batch norm follows the training /
//! inference mode; a frozen network detaches its parameters (gradients still flow
//! to its input, none are computed for its weights).
//!
//! ```no_run
//! # fn main() -> Result<(), ldct_train::model::ModelError> {
//! use candle_core::{DType, Device};
//! use ldct_proto::arch::{Arch, Preset, ResnetConfig};
//! use ldct_train::model::{Init, Network};
//!
//! let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig::default()))?;
//! let net = Network::new(arch, &Device::Cpu, DType::F32, Init::default(), 42)?;
//! let noisy = ndarray::Array2::<f32>::zeros((37, 50));
//! let clean = net.denoise_normalised(&noisy)?; // padded to 40x52, cropped back
//! # Ok(()) }
//! ```

mod init;
mod weights;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use ldct_proto::arch::{Arch, ArchError, Op, ParamSpec, UpsampleMode, INPUT};
use ndarray::Array2;

use crate::nn::{self, ConvBackend, Rectifier};

pub use init::Init;
pub use weights::{WeightsMismatch, ARCH_FILE, WEIGHTS_FILE};

/// Errors of building, running, saving and loading networks.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A weights file or map does not hold exactly the architecture's parameters.
    #[error(transparent)]
    Weights(#[from] WeightsMismatch),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The network cannot do what was asked (e.g. denoise with a discriminator).
    #[error("{0}")]
    Unsupported(String),
}

/// The device networks run on: CUDA device 0 when built with the `cuda` feature
/// and a GPU is there, the CPU otherwise (a build with `cuda` logs why it fell
/// back).
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => return d,
        Err(e) => tracing::warn!("CUDA device 0 unavailable, running on the CPU: {e}"),
    }
    Device::Cpu
}

/// Which device to run on, as a command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA device 0 when built with `cuda` and a GPU is there, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device 0; an error when the build has no `cuda` feature or no GPU is found.
    Cuda,
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            DeviceChoice::Auto => Ok(default_device()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Device::new_cuda(0).map_err(|e| {
                ModelError::Unsupported(format!("--device cuda: CUDA device 0 unavailable: {e}"))
            }),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda => Err(ModelError::Unsupported(
                "--device cuda: this ldct-train was built without the `cuda` feature \
                 (cargo build --release -p ldct-train --features cuda)"
                    .into(),
            )),
        }
    }
}

/// A `VarMap` over existing variables (shared, not copied) under the given
/// names, for [`Network::from_varmap`] to build a graph on variables that other
/// networks own (a later name replaces an earlier equal one).
pub fn shared_varmap<'a>(vars: impl IntoIterator<Item = (String, &'a Var)>) -> VarMap {
    let map = VarMap::new();
    {
        let data = map.data();
        // A fresh map's lock: no other thread has held it, so it cannot be poisoned.
        let mut data = data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, var) in vars {
            data.insert(name, var.clone());
        }
    }
    map
}

/// A network: an [`Arch`] and its parameters as Candle variables.
///
/// `clone()` shares the variables (Candle `Var`s are reference-counted): a clone
/// can have its own mode, backend and frozen flag over the same weights.
#[derive(Debug, Clone)]
pub struct Network {
    arch: Arch,
    specs: Vec<ParamSpec>,
    vars: Vec<Var>,
    /// For each node: indices into `specs`/`vars` in `Op::parameters` order.
    node_params: Vec<Vec<usize>>,
    /// For each node: its inputs as node indices, `None` for the graph input.
    node_inputs: Vec<Vec<Option<usize>>>,
    /// For each node: the last node that reads it (so inference can free it).
    last_use: Vec<usize>,
    /// For each node: the rectifier it applies itself, when it is a convolution or
    /// an instance norm (no affine) whose only reader is a ReLU or leaky ReLU
    /// (`ConvBackend::conv2d_then`, `instance_norm_rectified`).
    fused_act: Vec<Option<Rectifier>>,
    /// For each node: a ReLU or leaky ReLU that its input node applied
    /// (`fused_act`), which passes that input on.
    passes_on: Vec<bool>,
    device: Device,
    dtype: DType,
    backend: ConvBackend,
    training: bool,
    frozen: bool,
}

impl Network {
    /// A network with freshly initialised parameters (deterministic for a seed).
    pub fn new(
        arch: Arch,
        device: &Device,
        dtype: DType,
        init: Init,
        seed: u64,
    ) -> Result<Network, ModelError> {
        let net = Self::build(arch, device, dtype, |spec, op| {
            Ok(Var::from_tensor(&init::init_tensor(
                spec, op, init, seed, device, dtype,
            )?)?)
        })?;
        net.tie_sub_pixel_kernels()?;
        Ok(net)
    }

    /// ICNR (Aitken et al. 2017): a convolution that feeds a pixel shuffle by `s`
    /// starts with the `s * s` kernels (and biases) of each output channel equal, so
    /// the pair begins as a nearest-neighbour resize-convolution, whose 2x2 blocks
    /// are uniform: no checkerboard at the start, and training can still give each
    /// sub-pixel its own kernel.
    fn tie_sub_pixel_kernels(&self) -> candle_core::Result<()> {
        for (i, node) in self.arch.nodes.iter().enumerate() {
            let Op::PixelShuffle { scale } = node.op else {
                continue;
            };
            let Some(Some(conv)) = self.node_inputs[i].first().copied() else {
                continue;
            };
            if !matches!(self.arch.nodes[conv].op, Op::Conv2d { .. }) {
                continue;
            }
            let group = scale * scale;
            for &p in &self.node_params[conv] {
                let v = &self.vars[p];
                let dims = v.dims().to_vec();
                let mut grouped = vec![dims[0] / group, group];
                grouped.extend_from_slice(&dims[1..]);
                let first = v.as_tensor().reshape(grouped.as_slice())?.narrow(1, 0, 1)?;
                let tied = first.broadcast_as(grouped.as_slice())?.contiguous()?;
                v.set(&tied.reshape(dims.as_slice())?)?;
            }
        }
        Ok(())
    }

    /// A network whose parameters live in `varmap` under the architecture's names:
    /// variables already there are used (their shapes must match), missing ones
    /// are created as in [`Network::new`] and inserted. The network and the map
    /// share the variables.
    pub fn from_varmap(
        arch: Arch,
        varmap: &VarMap,
        device: &Device,
        dtype: DType,
        init: Init,
        seed: u64,
    ) -> Result<Network, ModelError> {
        let data = varmap.data();
        let mut data = data
            .lock()
            .map_err(|_| ModelError::Unsupported("the VarMap's lock is poisoned".into()))?;
        Self::build(arch, device, dtype, |spec, op| {
            if let Some(var) = data.get(&spec.name) {
                if var.dims() != spec.shape.as_slice() || var.dtype() != dtype {
                    return Err(WeightsMismatch::single(
                        "VarMap",
                        &spec.name,
                        &spec.shape,
                        var.dims(),
                    )
                    .into());
                }
                return Ok(var.clone());
            }
            let var = Var::from_tensor(&init::init_tensor(spec, op, init, seed, device, dtype)?)?;
            data.insert(spec.name.clone(), var.clone());
            Ok(var)
        })
    }

    /// A network with the weights of a safetensors file (see
    /// [`Network::load_safetensors`]).
    pub fn load(
        arch: Arch,
        weights: impl AsRef<Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Network, ModelError> {
        let net = Self::new(arch, device, dtype, Init::default(), 0)?;
        net.load_safetensors(weights)?;
        Ok(net)
    }

    /// Reads `arch.json` and `weights.safetensors` from a folder.
    pub fn load_dir(
        dir: impl AsRef<Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Network, ModelError> {
        let dir = dir.as_ref();
        let path = dir.join(ARCH_FILE);
        let json = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let arch = Arch::from_json(&json)?;
        Self::load(arch, dir.join(WEIGHTS_FILE), device, dtype)
    }

    /// Writes `arch.json` and `weights.safetensors` into a folder (created if
    /// needed).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(ARCH_FILE);
        std::fs::write(&path, self.arch.to_json()).map_err(io(&path))?;
        self.save_safetensors(dir.join(WEIGHTS_FILE))
    }

    fn build(
        arch: Arch,
        device: &Device,
        dtype: DType,
        mut make: impl FnMut(&ParamSpec, &Op) -> Result<Var, ModelError>,
    ) -> Result<Network, ModelError> {
        arch.validate()?;
        if !dtype.is_float() {
            return Err(ModelError::Unsupported(format!(
                "networks need a float dtype, not {dtype:?}"
            )));
        }
        let specs = arch.parameters();
        let position: HashMap<&str, usize> = arch
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut vars = Vec::with_capacity(specs.len());
        let mut node_params = vec![Vec::new(); arch.nodes.len()];
        for (i, spec) in specs.iter().enumerate() {
            let node = position[spec.node.as_str()];
            vars.push(make(spec, &arch.nodes[node].op)?);
            node_params[node].push(i);
        }
        let node_inputs: Vec<Vec<Option<usize>>> = arch
            .nodes
            .iter()
            .map(|n| {
                n.inputs
                    .iter()
                    .map(|r| (r != INPUT).then(|| position[r.as_str()]))
                    .collect()
            })
            .collect();
        let mut last_use: Vec<usize> = (0..arch.nodes.len()).collect();
        let mut readers = vec![0usize; arch.nodes.len()];
        for (i, inputs) in node_inputs.iter().enumerate() {
            for j in inputs.iter().flatten() {
                last_use[*j] = i;
                readers[*j] += 1;
            }
        }
        let mut fused_act = vec![None; arch.nodes.len()];
        let mut passes_on = vec![false; arch.nodes.len()];
        for (i, (node, inputs)) in arch.nodes.iter().zip(&node_inputs).enumerate() {
            let r = match node.op {
                Op::Relu => Rectifier::RELU,
                Op::LeakyRelu { slope } => Rectifier::leaky(slope),
                _ => continue,
            };
            let [Some(j)] = inputs.as_slice() else {
                continue;
            };
            let fusable = matches!(
                arch.nodes[*j].op,
                Op::Conv2d { .. }
                    | Op::ConvTranspose2d { .. }
                    | Op::InstanceNorm { affine: false, .. }
            );
            if fusable && readers[*j] == 1 {
                fused_act[*j] = Some(r);
                passes_on[i] = true;
            }
        }
        Ok(Network {
            arch,
            specs,
            vars,
            node_params,
            node_inputs,
            last_use,
            fused_act,
            passes_on,
            device: device.clone(),
            dtype,
            backend: ConvBackend::default(),
            training: true,
            frozen: false,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn backend(&self) -> ConvBackend {
        self.backend
    }

    /// Picks the convolution implementation of every layer.
    pub fn set_backend(&mut self, backend: ConvBackend) {
        self.backend = backend;
    }

    pub fn with_backend(mut self, backend: ConvBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Whether [`Network::forward`] runs in training mode (the default).
    pub fn training(&self) -> bool {
        self.training
    }

    /// Training mode: batch norm uses and updates batch statistics. Inference
    /// mode: batch norm uses the running statistics. Instance norm is the same in
    /// both (no running statistics, as CycleGAN).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// A frozen network uses detached parameters: backward passes through it to
    /// its input but computes no gradient for its weights (a discriminator
    /// during the generator step). Batch norm still updates its running
    /// statistics in training mode, as PyTorch.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Every parameter and buffer with its variable, in architecture order.
    pub fn parameters(&self) -> impl Iterator<Item = (&ParamSpec, &Var)> {
        self.specs.iter().zip(&self.vars)
    }

    /// The variable of a parameter by name.
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .map(|i| &self.vars[i])
    }

    /// Overwrites every parameter and buffer with random values that look trained
    /// (non-zero biases, norm scales around 1, non-trivial batch norm running
    /// statistics), deterministic per seed: for parity tests of exporters and
    /// convolution kernels, where a fresh initialisation would hide mistakes.
    pub fn randomise_for_testing(&self, seed: u64) -> Result<(), ModelError> {
        for (i, (spec, var)) in self.parameters().enumerate() {
            let node = self
                .node_params
                .iter()
                .position(|ps| ps.contains(&i))
                .expect("every parameter has a node");
            let t = init::trained_looking_tensor(
                spec,
                &self.arch.nodes[node].op,
                seed,
                &self.device,
                self.dtype,
            )?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// The variables an optimiser trains (batch norm running statistics left
    /// out), in architecture order.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.parameters()
            .filter(|(s, _)| s.trainable())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A `VarMap` holding this network's variables (shared, not copied) under
    /// the architecture's names, buffers included.
    pub fn varmap(&self) -> VarMap {
        shared_varmap(self.named_vars(None))
    }

    /// This network's variables under their names, each prefixed by `prefix.`
    /// when given: what [`shared_varmap`] takes to put several networks' variables
    /// in one map (a graph that wires them together).
    pub fn named_vars<'a>(
        &'a self,
        prefix: Option<&'a str>,
    ) -> impl Iterator<Item = (String, &'a Var)> + 'a {
        self.parameters().map(move |(s, v)| match prefix {
            Some(p) => (format!("{p}.{}", s.name), v),
            None => (s.name.clone(), v),
        })
    }

    /// A network with this one's architecture and backend whose variables are copies
    /// of this one's (not shared): training either leaves the other alone.
    pub fn deep_copy(&self) -> Result<Network, ModelError> {
        let net = Self::build(
            self.arch().clone(),
            self.device(),
            self.dtype(),
            |spec, _| {
                let var = self.var(&spec.name).ok_or_else(|| {
                    ModelError::Unsupported(format!("no parameter {} to copy", spec.name))
                })?;
                Ok(Var::from_tensor(&var.as_tensor().copy()?)?)
            },
        )?;
        Ok(net.with_backend(self.backend()))
    }

    /// The forward pass in the network's current mode (see
    /// [`Network::set_training`]). `x` is `[N, input_channels, H, W]` with H and W
    /// that the architecture accepts ([`Arch::infer_shapes`]); see
    /// [`Network::forward_any_size`] for arbitrary sizes.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, self.training, self.frozen)
    }

    /// The forward pass in training (`true`) or inference mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.run(x, train, self.frozen)
    }

    /// Inference on any H and W: reflection-pads the bottom and right to
    /// [`Arch::padded_size`], runs in inference mode without recording gradients,
    /// and crops the output back to `H x W`. Only for networks whose output has
    /// the input's size.
    pub fn forward_any_size(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (_, _, h, w) = x.dims4()?;
        let (ph, pw) = self.arch.padded_size(h, w)?;
        let out = self.arch.output_shape(ph, pw)?;
        if (out.h, out.w) != (ph, pw) {
            return Err(ModelError::Unsupported(format!(
                "{} maps {ph}x{pw} to {}x{}: only image-to-image networks can run on any size",
                self.arch.name, out.h, out.w
            )));
        }
        let padded = nn::pad_to_size(&x.detach(), ph, pw)?;
        let y = self.run(&padded, false, true)?;
        Ok(nn::crop(&y, h, w)?)
    }

    /// Denoises one normalised slice (values in the manifest's normalised range,
    /// [-1, 1] by default) of any size; see [`Network::forward_any_size`].
    pub fn denoise_normalised(&self, image: &Array2<f32>) -> Result<Array2<f32>, ModelError> {
        self.denoise_normalised_with(image, None)
    }

    /// [`Network::denoise_normalised`] for a single-channel network, or for a
    /// noise-conditioned one (two input channels) with `noise_map` the value of its
    /// constant second channel.
    pub fn denoise_normalised_with(
        &self,
        image: &Array2<f32>,
        noise_map: Option<f32>,
    ) -> Result<Array2<f32>, ModelError> {
        let (h, w) = image.dim();
        if self.arch.input_channels == 2 && self.arch.output_channels == 1 {
            let level = noise_map.ok_or_else(|| {
                ModelError::Unsupported(format!("{} needs a noise map value", self.arch.name))
            })?;
            let mut v: Vec<f32> = image.iter().copied().collect();
            v.extend(std::iter::repeat_n(level, h * w));
            let x = Tensor::from_vec(v, (1, 2, h, w), &self.device)?.to_dtype(self.dtype)?;
            let y = self.forward_any_size(&x)?;
            let v = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            return Array2::from_shape_vec((h, w), v)
                .map_err(|e| ModelError::Unsupported(format!("output of unexpected size: {e}")));
        }
        if self.arch.input_channels != 1 || self.arch.output_channels != 1 {
            return Err(ModelError::Unsupported(format!(
                "{} is not a single-channel image-to-image network",
                self.arch.name
            )));
        }
        let x = Tensor::from_vec(
            image.iter().copied().collect::<Vec<f32>>(),
            (1, 1, h, w),
            &self.device,
        )?
        .to_dtype(self.dtype)?;
        let y = self.forward_any_size(&x)?;
        let v = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Array2::from_shape_vec((h, w), v)
            .map_err(|e| ModelError::Unsupported(format!("output of unexpected size: {e}")))
    }

    /// A parameter as used by the forward pass (detached when `detach`).
    fn param(&self, i: usize, detach: bool) -> Tensor {
        let t = self.vars[i].as_tensor();
        if detach {
            t.detach()
        } else {
            t.clone()
        }
    }

    fn check_input(&self, x: &Tensor, train: bool) -> candle_core::Result<()> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.arch.input_channels {
            candle_core::bail!(
                "{} takes {} input channels, got a tensor of shape {:?}",
                self.arch.name,
                self.arch.input_channels,
                x.dims()
            )
        }
        if x.dtype() != self.dtype {
            candle_core::bail!(
                "{} runs in {:?}, got a {:?} input",
                self.arch.name,
                self.dtype,
                x.dtype()
            )
        }
        let shapes = self
            .arch
            .infer_shapes(h, w)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if train && !self.backend.any_size_backward(x.device(), x.dtype()) {
            // Candle's conv2d backward takes output_padding from H for both axes.
            for (i, node) in self.arch.nodes.iter().enumerate() {
                if let Op::Conv2d {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    ..
                } = node.op
                {
                    if stride < 2 {
                        continue;
                    }
                    let (ih, iw) = match self.node_inputs[i][0] {
                        None => (h, w),
                        Some(j) => (shapes[j].h, shapes[j].w),
                    };
                    let span = dilation * (kernel - 1) + 1;
                    if (ih + 2 * padding - span) % stride != (iw + 2 * padding - span) % stride {
                        candle_core::bail!(
                            "training {} on {h}x{w}: node `{}` (stride {stride}) sees {ih}x{iw}, \
                             whose parities differ, and Candle's conv2d backward fails on that; \
                             train on square patches or on multiples of {}",
                            self.arch.name,
                            node.name,
                            self.arch.spatial_multiple()
                        )
                    }
                }
            }
        }
        Ok(())
    }

    fn run(&self, x: &Tensor, train: bool, detach: bool) -> candle_core::Result<Tensor> {
        self.check_input(x, train)?;
        let n_nodes = self.arch.nodes.len();
        let mut values: Vec<Option<Tensor>> = vec![None; n_nodes];
        for (i, node) in self.arch.nodes.iter().enumerate() {
            let inputs: Vec<&Tensor> = self.node_inputs[i]
                .iter()
                .map(|r| match r {
                    None => Ok(x),
                    Some(j) => values[*j].as_ref().ok_or_else(|| {
                        candle_core::Error::Msg(format!("node {} was freed too early", node.name))
                    }),
                })
                .collect::<candle_core::Result<_>>()?;
            let p: Vec<Tensor> = self.node_params[i]
                .iter()
                .map(|&k| self.param(k, detach))
                .collect();
            let a = inputs[0];
            let act = self.fused_act[i];
            let y = match node.op {
                Op::Conv2d {
                    stride,
                    padding,
                    dilation,
                    ..
                } => {
                    self.backend
                        .conv2d_then(a, &p[0], p.get(1), stride, padding, dilation, act)?
                }
                Op::ConvTranspose2d {
                    stride,
                    padding,
                    output_padding,
                    ..
                } => self.backend.conv_transpose2d_then(
                    a,
                    &p[0],
                    p.get(1),
                    stride,
                    padding,
                    output_padding,
                    act,
                )?,
                Op::ReflectionPad2d { pad } => nn::reflection_pad2d(a, [pad; 4])?,
                Op::ZeroPad2d { pad } => nn::zero_pad2d(a, pad)?,
                Op::InstanceNorm { eps, affine, .. } => match act {
                    Some(r) => self.backend.instance_norm_rectified(a, eps, r)?,
                    None => nn::instance_norm(a, eps, affine.then(|| (&p[0], &p[1])))?,
                },
                Op::BatchNorm { eps, momentum, .. } => {
                    let (weight, bias) = (&p[0], &p[1]);
                    let (rm, rv) = (
                        &self.vars[self.node_params[i][2]],
                        &self.vars[self.node_params[i][3]],
                    );
                    if train {
                        let (mean, var) = nn::batch_stats(a)?;
                        let (n, _, h, w) = a.dims4()?;
                        let count = (n * h * w) as f64;
                        let unbiased = (var.detach() * (count / (count - 1.0).max(1.0)))?;
                        rm.set(
                            &((rm.as_tensor() * (1.0 - momentum))? + (mean.detach() * momentum)?)?,
                        )?;
                        rv.set(&((rv.as_tensor() * (1.0 - momentum))? + (unbiased * momentum)?)?)?;
                        nn::batch_norm(a, &mean, &var, weight, bias, eps)?
                    } else {
                        nn::batch_norm(
                            a,
                            &rm.as_tensor().detach(),
                            &rv.as_tensor().detach(),
                            weight,
                            bias,
                            eps,
                        )?
                    }
                }
                // Its input node applied it (`fused_act`).
                Op::Relu | Op::LeakyRelu { .. } if self.passes_on[i] => a.clone(),
                Op::Relu => self.backend.rectify(a, Rectifier::RELU)?,
                Op::LeakyRelu { slope } => self.backend.rectify(a, Rectifier::leaky(slope))?,
                Op::Tanh => a.tanh()?,
                Op::Add => a.add(inputs[1])?,
                Op::Mul => a.mul(inputs[1])?,
                Op::Div => a.div(inputs[1])?,
                Op::Exp => a.exp()?,
                Op::Affine { scale, shift } => a.affine(scale, shift)?,
                Op::Concat => Tensor::cat(&inputs, 1)?,
                Op::SelectChannels { start, count } => a.narrow(1, start, count)?,
                Op::PixelShuffle { scale } => pixel_shuffle(a, scale)?,
                Op::Upsample { scale, mode } => {
                    let (_, _, h, w) = a.dims4()?;
                    match mode {
                        UpsampleMode::Nearest => a.upsample_nearest2d(h * scale, w * scale)?,
                        UpsampleMode::Bilinear => {
                            a.upsample_bilinear2d(h * scale, w * scale, false)?
                        }
                    }
                }
            };
            values[i] = Some(y);
            // Free what no later node reads (the autograd graph keeps what it needs).
            for j in self.node_inputs[i].iter().flatten() {
                if self.last_use[*j] == i {
                    values[*j] = None;
                }
            }
        }
        values[n_nodes - 1]
            .take()
            .ok_or_else(|| candle_core::Error::Msg("the network has no output".into()))
    }
}

/// `[N, C * s * s, H, W]` -> `[N, C, H * s, W * s]` ([`Op::PixelShuffle`]; PyTorch's
/// `pixel_shuffle`, ONNX `DepthToSpace` mode `CRD`).
pub fn pixel_shuffle(x: &Tensor, scale: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let oc = c / (scale * scale);
    x.reshape((n, oc, scale, scale, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .contiguous()?
        .reshape((n, oc, h * scale, w * scale))
}

impl candle_core::Module for Network {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Network::forward(self, xs)
    }
}
