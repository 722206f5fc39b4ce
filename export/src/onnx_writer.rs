//! The ONNX graph of an [`Arch`], written from the same layer graph the Candle
//! network is built from.
//!
//! | arch op                  | ONNX (opset 17)                                                    |
//! |--------------------------|--------------------------------------------------------------------|
//! | `Conv2d`                 | `Conv` (kernel_shape, strides, pads, dilations, group 1)           |
//! | `ConvTranspose2d`        | `ConvTranspose` (kernel_shape, strides, pads, output_padding)      |
//! | `ReflectionPad2d`        | `Pad` mode `reflect`, pads `[0,0,p,p,0,0,p,p]` as an int64 input   |
//! | `ZeroPad2d`              | `Pad` mode `constant` (value 0)                                    |
//! | `InstanceNorm`           | two-pass float32 statistics from `ReduceMean`, `Sub`, `Mul`, `ReduceMean`, `Add`, `Sqrt`, `Div` ([`InstanceNormForm::Float32`], default), the same in float64 between `Cast`s ([`InstanceNormForm::Float64`]), or `InstanceNormalization` (constant ones/zeros when not affine; [`InstanceNormForm::Native`]) |
//! | `BatchNorm`              | `BatchNormalization` inference form (running statistics)           |
//! | `Relu`, `LeakyRelu`, `Tanh` | `Relu`, `LeakyRelu` (alpha), `Tanh`                             |
//! | `Add`, `Concat`          | `Add`, `Concat` (axis 1)                                           |
//! | `Mul`, `Div`, `Exp`      | `Mul`, `Div`, `Exp`                                                |
//! | `Affine`                 | `Mul` by the scalar initializer `{node}.scale`, then `Add` of `{node}.shift` (a factor 1 or a shift 0 is left out; both: `Identity`) |
//! | `Upsample`               | `Resize` with scales (nearest: asymmetric + floor; bilinear: linear + half_pixel) |
//! | `PixelShuffle`           | `DepthToSpace` (blocksize, mode `CRD`)                             |
//!
//! Weights are initializers named exactly as [`Arch::parameters`] (the safetensors
//! names). The graph input is `input`, the output `output`, both float32
//! `[N, C, H, W]` with `N`, `H`, `W` symbolic.
//!
//! With [`Precision::Fp16`] the weights are float16, the input is cast to float16
//! after entering the graph and the output back to float32 before leaving it; each
//! `InstanceNormalization` runs in float32 between two casts (its mean and
//! variance over a whole image lose too much in float16).

use std::collections::{HashMap, HashSet};

use ldct_proto::arch::{Arch, Op, UpsampleMode, INPUT};
use ldct_proto::onnx::{self, attr, tensor_proto::DataType};

/// Name of the graph output.
pub const OUTPUT: &str = ldct_proto::contract::OUTPUT_NAME;

/// Numeric precision of the written weights and the graph's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
}

impl Precision {
    /// `fp32` or `fp16`, as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }

    /// The max abs difference to the Candle float32 forward that parity accepts.
    pub fn tolerance(self) -> f32 {
        match self {
            Precision::Fp32 => 1e-4,
            Precision::Fp16 => 1e-2,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "fp16" | "float16" | "f16" | "half" => Ok(Precision::Fp16),
            other => Err(format!("precision {other:?}: expected fp32 or fp16")),
        }
    }
}

/// Errors of writing the graph.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Arch(#[from] ldct_proto::arch::ArchError),
    #[error("parameter `{0}` is missing from the weights")]
    MissingWeight(String),
    #[error("parameter `{name}` has {actual} values, its shape {shape:?} needs {expected}")]
    WeightSize {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("opset {0} is not supported (17 to 21)")]
    Opset(i64),
}

/// How a float32 graph computes instance norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InstanceNormForm {
    /// Two-pass float32 statistics from elementary ops: the mean, then the mean of
    /// the squared deviations from it. ONNX Runtime's float32
    /// `InstanceNormalization` kernel loses up to ~3e-5 (relative to the standard
    /// deviation) on planes with a large mean and a small spread, which CT slices
    /// with wide constant air regions produce; through a few layers that exceeds
    /// the 1e-4 parity budget. Centring before squaring removes that loss without
    /// the float64 copies of [`InstanceNormForm::Float64`], so the activations'
    /// memory stays that of the float32 graph. The default.
    #[default]
    Float32,
    /// The same statistics in float64 (a `Cast` of every normalised activation to
    /// double: three float64 temporaries of the layer's size, 3x its float32
    /// memory). Kept as the reference the float32 form is measured against.
    Float64,
    /// The `InstanceNormalization` op (fastest, fused on GPUs).
    Native,
}

impl std::str::FromStr for InstanceNormForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(InstanceNormForm::Float32),
            "f64" | "float64" => Ok(InstanceNormForm::Float64),
            "native" => Ok(InstanceNormForm::Native),
            other => Err(format!(
                "instance norm form {other:?}: expected f32, f64 or native"
            )),
        }
    }
}

/// What to write besides the graph.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub precision: Precision,
    /// Instance norm form of float32 graphs (float16 graphs always use the
    /// `InstanceNormalization` op in float32 between casts).
    pub instance_norm: InstanceNormForm,
    /// Default-domain opset (17 to 21).
    pub opset: i64,
    /// `metadata_props` of the model (e.g. the manifest JSON).
    pub metadata: Vec<(String, String)>,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            precision: Precision::Fp32,
            instance_norm: InstanceNormForm::default(),
            opset: onnx::DEFAULT_OPSET,
            metadata: Vec::new(),
            producer_name: "ldct-export".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
        }
    }
}

fn f16_tensor(name: &str, dims: &[i64], data: &[f32]) -> onnx::TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 2);
    for v in data {
        raw.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
    }
    onnx::TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: DataType::Float16 as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn cast(name: &str, input: &str, output: &str, to: DataType) -> onnx::NodeProto {
    onnx::node(
        "Cast",
        name,
        &[input],
        &[output],
        vec![attr::int("to", to as i64)],
    )
}

struct Builder {
    precision: Precision,
    nodes: Vec<onnx::NodeProto>,
    initializers: Vec<onnx::TensorProto>,
}

impl Builder {
    /// Instance norm with float64 statistics: `Cast` to double, `ReduceMean`,
    /// `Sub`, `Mul`, `ReduceMean`, `Add` eps, `Sqrt`, `Div`, `Cast` back to float,
    /// then `* weight + bias` (weights `[C]` unsqueezed to `[1, C, 1, 1]`) when
    /// affine.
    /// Instance norm from elementary ops, two-pass (mean, then the mean of the
    /// squared deviations), its statistics in float32 (the mean corrected by the mean
    /// of the residuals) or float64 (`double`).
    #[allow(clippy::too_many_arguments)]
    fn instance_norm_two_pass(
        &mut self,
        name: &str,
        x: &str,
        out: &str,
        eps: f64,
        affine: bool,
        opset: i64,
        double: bool,
    ) {
        let t = |s: &str| format!("{name}.{s}");
        // ReduceMean over `axes` (as an input from opset 18, an attribute before).
        let reduce = |b: &mut Builder, input: &str, output: &str, node: &str, axes: &[i64]| {
            if opset >= 18 {
                let axes_name = format!("{node}.axes");
                b.initializers
                    .push(onnx::i64_tensor(&axes_name, &[axes.len() as i64], axes));
                b.node(
                    "ReduceMean",
                    node,
                    &[input, &axes_name],
                    output,
                    vec![attr::int("keepdims", 1)],
                );
            } else {
                b.node(
                    "ReduceMean",
                    node,
                    &[input],
                    output,
                    vec![attr::ints("axes", axes), attr::int("keepdims", 1)],
                );
            }
        };
        // The mean over each plane. In float32, the means of the rows first, then their
        // mean: each sum has W or H terms rather than H·W, so its rounding error grows
        // with W + H, not H·W (equal row lengths: the mean of the row means is the mean).
        let mean_node = |b: &mut Builder, input: &str, output: &str, node: &str| {
            if double {
                reduce(b, input, output, node, &[2, 3]);
            } else {
                let rows = format!("{node}.rows_out");
                reduce(b, input, &rows, &format!("{node}.rows"), &[3]);
                reduce(b, &rows, output, node, &[2]);
            }
        };
        let x_stats = if double {
            self.initializers.push(onnx::TensorProto {
                name: t("eps"),
                dims: vec![],
                data_type: DataType::Double as i32,
                raw_data: eps.to_le_bytes().to_vec(),
                ..Default::default()
            });
            self.nodes
                .push(cast(&t("cast_f64"), x, &t("x_f64"), DataType::Double));
            t("x_f64")
        } else {
            self.initializers
                .push(onnx::f32_tensor(&t("eps"), &[], &[eps as f32]));
            x.to_string()
        };
        mean_node(self, &x_stats, &t("mean"), &t("mean_op"));
        if double {
            self.node(
                "Sub",
                &t("center"),
                &[&x_stats, &t("mean")],
                &t("centered"),
                vec![],
            );
        } else {
            // A float32 mean of a plane with a large mean and a small spread is off by
            // ~n·ε·|mean|, large against the spread: subtract it, then the mean of the
            // (small) residuals, computed to ~ε of the spread, corrects it.
            self.node(
                "Sub",
                &t("center0"),
                &[&x_stats, &t("mean")],
                &t("centered0"),
                vec![],
            );
            mean_node(
                self,
                &t("centered0"),
                &t("mean_residual"),
                &t("mean_residual_op"),
            );
            self.node(
                "Sub",
                &t("center"),
                &[&t("centered0"), &t("mean_residual")],
                &t("centered"),
                vec![],
            );
        }
        self.node(
            "Mul",
            &t("square"),
            &[&t("centered"), &t("centered")],
            &t("sq"),
            vec![],
        );
        mean_node(self, &t("sq"), &t("var"), &t("var_op"));
        self.node(
            "Add",
            &t("add_eps"),
            &[&t("var"), &t("eps")],
            &t("var_eps"),
            vec![],
        );
        self.node("Sqrt", &t("sqrt"), &[&t("var_eps")], &t("std"), vec![]);
        self.node(
            "Div",
            &t("divide"),
            &[&t("centered"), &t("std")],
            &match (double, affine) {
                (true, _) => t("norm_f64"),
                (false, true) => t("norm"),
                // Not affine: the normalised activation is the layer's output.
                (false, false) => out.to_string(),
            },
            vec![],
        );
        if affine {
            if double {
                self.nodes.push(cast(
                    &t("cast_f32"),
                    &t("norm_f64"),
                    &t("norm"),
                    DataType::Float,
                ));
            }
            self.initializers
                .push(onnx::i64_tensor(&t("unsqueeze_axes"), &[3], &[0, 2, 3]));
            self.node(
                "Unsqueeze",
                &t("weight_4d"),
                &[&t("weight"), &t("unsqueeze_axes")],
                &t("weight4"),
                vec![],
            );
            self.node(
                "Unsqueeze",
                &t("bias_4d"),
                &[&t("bias"), &t("unsqueeze_axes")],
                &t("bias4"),
                vec![],
            );
            self.node(
                "Mul",
                &t("scale"),
                &[&t("norm"), &t("weight4")],
                &t("scaled"),
                vec![],
            );
            self.node("Add", name, &[&t("scaled"), &t("bias4")], out, vec![]);
        } else if double {
            self.nodes
                .push(cast(name, &t("norm_f64"), out, DataType::Float));
        }
    }

    /// A float initializer in the graph's precision (or float32 when `force_f32`).
    fn float(&mut self, name: &str, shape: &[usize], data: &[f32], force_f32: bool) {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = if self.precision == Precision::Fp16 && !force_f32 {
            f16_tensor(name, &dims, data)
        } else {
            onnx::f32_tensor(name, &dims, data)
        };
        self.initializers.push(t);
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<onnx::AttributeProto>,
    ) {
        self.nodes
            .push(onnx::node(op, name, inputs, &[output], attrs));
    }
}

/// Builds the ONNX model of `arch` with the given weights (float32 values in
/// row-major order, by parameter name).
pub fn build_model(
    arch: &Arch,
    weights: &HashMap<String, Vec<f32>>,
    options: &WriterOptions,
) -> Result<onnx::ModelProto, WriterError> {
    if !(17..=21).contains(&options.opset) {
        return Err(WriterError::Opset(options.opset));
    }
    arch.validate()?;
    let fp16 = options.precision == Precision::Fp16;
    let mut b = Builder {
        precision: options.precision,
        nodes: Vec::new(),
        initializers: Vec::new(),
    };

    // Weights, named as the parameters.
    let params = arch.parameters();
    let param_names: HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    for p in &params {
        let data = weights
            .get(&p.name)
            .ok_or_else(|| WriterError::MissingWeight(p.name.clone()))?;
        if data.len() != p.numel() {
            return Err(WriterError::WeightSize {
                name: p.name.clone(),
                shape: p.shape.clone(),
                expected: p.numel(),
                actual: data.len(),
            });
        }
        // Instance norm scale and bias stay float32: that op runs in float32.
        let force_f32 = matches!(
            arch.node(&p.node).map(|n| &n.op),
            Some(Op::InstanceNorm { .. })
        );
        b.float(&p.name, &p.shape, data, force_f32);
    }

    // Tensor names of node outputs: the node name, unless it clashes with a
    // reserved or parameter name; the last node writes the graph output.
    let last = arch.nodes.len() - 1;
    let mut tensor: HashMap<&str, String> = HashMap::new();
    let graph_input = if fp16 {
        let name = "input.fp16".to_string();
        b.nodes
            .push(cast("input.cast", INPUT, &name, DataType::Float16));
        name
    } else {
        INPUT.to_string()
    };
    tensor.insert(INPUT, graph_input);
    for (i, node) in arch.nodes.iter().enumerate() {
        let out = if i == last && !fp16 {
            OUTPUT.to_string()
        } else {
            let mut n = node.name.clone();
            while n == OUTPUT || n == INPUT || n == "input.fp16" || param_names.contains(n.as_str())
            {
                n.push_str(".out");
            }
            n
        };
        let ins: Vec<String> = node
            .inputs
            .iter()
            .map(|r| tensor[r.as_str()].clone())
            .collect();
        let x = ins[0].as_str();
        let name = node.name.as_str();
        let pname = |s: &str| format!("{name}.{s}");
        match node.op {
            Op::Conv2d {
                kernel,
                stride,
                padding,
                dilation,
                bias,
                ..
            } => {
                let (w, bi) = (pname("weight"), pname("bias"));
                let mut inputs = vec![x, w.as_str()];
                if bias {
                    inputs.push(bi.as_str());
                }
                let (k, s, p, d) = (
                    kernel as i64,
                    stride as i64,
                    padding as i64,
                    dilation as i64,
                );
                b.node(
                    "Conv",
                    name,
                    &inputs,
                    &out,
                    vec![
                        attr::ints("kernel_shape", &[k, k]),
                        attr::ints("strides", &[s, s]),
                        attr::ints("pads", &[p, p, p, p]),
                        attr::ints("dilations", &[d, d]),
                        attr::int("group", 1),
                    ],
                );
            }
            Op::ConvTranspose2d {
                kernel,
                stride,
                padding,
                output_padding,
                bias,
                ..
            } => {
                let (w, bi) = (pname("weight"), pname("bias"));
                let mut inputs = vec![x, w.as_str()];
                if bias {
                    inputs.push(bi.as_str());
                }
                let (k, s, p, op) = (
                    kernel as i64,
                    stride as i64,
                    padding as i64,
                    output_padding as i64,
                );
                b.node(
                    "ConvTranspose",
                    name,
                    &inputs,
                    &out,
                    vec![
                        attr::ints("kernel_shape", &[k, k]),
                        attr::ints("strides", &[s, s]),
                        attr::ints("pads", &[p, p, p, p]),
                        attr::ints("output_padding", &[op, op]),
                        attr::ints("dilations", &[1, 1]),
                        attr::int("group", 1),
                    ],
                );
            }
            Op::ReflectionPad2d { pad } | Op::ZeroPad2d { pad } => {
                let p = pad as i64;
                let pads = pname("pads");
                b.initializers
                    .push(onnx::i64_tensor(&pads, &[8], &[0, 0, p, p, 0, 0, p, p]));
                let mode = if matches!(node.op, Op::ReflectionPad2d { .. }) {
                    "reflect"
                } else {
                    "constant"
                };
                b.node(
                    "Pad",
                    name,
                    &[x, pads.as_str()],
                    &out,
                    vec![attr::string("mode", mode)],
                );
            }
            Op::InstanceNorm { eps, affine, .. }
                if !fp16 && options.instance_norm != InstanceNormForm::Native =>
            {
                let double = options.instance_norm == InstanceNormForm::Float64;
                b.instance_norm_two_pass(name, x, &out, eps, affine, options.opset, double);
            }
            Op::InstanceNorm {
                channels,
                eps,
                affine,
            } => {
                let (scale, shift) = if affine {
                    (pname("weight"), pname("bias"))
                } else {
                    let (s, z) = (pname("scale_ones"), pname("bias_zeros"));
                    b.float(&s, &[channels], &vec![1.0; channels], true);
                    b.float(&z, &[channels], &vec![0.0; channels], true);
                    (s, z)
                };
                let eps_attr = vec![attr::float("epsilon", eps as f32)];
                if fp16 {
                    let (x32, y32) = (format!("{name}.in_f32"), format!("{name}.out_f32"));
                    b.nodes
                        .push(cast(&format!("{name}.cast_in"), x, &x32, DataType::Float));
                    b.node(
                        "InstanceNormalization",
                        name,
                        &[&x32, &scale, &shift],
                        &y32,
                        eps_attr,
                    );
                    b.nodes.push(cast(
                        &format!("{name}.cast_out"),
                        &y32,
                        &out,
                        DataType::Float16,
                    ));
                } else {
                    b.node(
                        "InstanceNormalization",
                        name,
                        &[x, &scale, &shift],
                        &out,
                        eps_attr,
                    );
                }
            }
            Op::BatchNorm { eps, momentum, .. } => {
                let n = ["weight", "bias", "running_mean", "running_var"].map(pname);
                b.node(
                    "BatchNormalization",
                    name,
                    &[x, &n[0], &n[1], &n[2], &n[3]],
                    &out,
                    vec![
                        attr::float("epsilon", eps as f32),
                        // ONNX's momentum is the weight of the old running value.
                        attr::float("momentum", (1.0 - momentum) as f32),
                        attr::int("training_mode", 0),
                    ],
                );
            }
            Op::Relu => b.node("Relu", name, &[x], &out, vec![]),
            Op::LeakyRelu { slope } => b.node(
                "LeakyRelu",
                name,
                &[x],
                &out,
                vec![attr::float("alpha", slope as f32)],
            ),
            Op::Tanh => b.node("Tanh", name, &[x], &out, vec![]),
            Op::Add => b.node("Add", name, &[x, ins[1].as_str()], &out, vec![]),
            Op::Mul => b.node("Mul", name, &[x, ins[1].as_str()], &out, vec![]),
            Op::Div => b.node("Div", name, &[x, ins[1].as_str()], &out, vec![]),
            Op::Exp => b.node("Exp", name, &[x], &out, vec![]),
            Op::Affine { scale, shift } => {
                let (sc, sh) = (pname("scale"), pname("shift"));
                // Scalars in the graph's precision (broadcast over [N, C, H, W]).
                match (scale != 1.0, shift != 0.0) {
                    (true, true) => {
                        let scaled = pname("scaled");
                        b.float(&sc, &[], &[scale as f32], false);
                        b.float(&sh, &[], &[shift as f32], false);
                        b.node("Mul", &pname("mul"), &[x, &sc], &scaled, vec![]);
                        b.node("Add", name, &[&scaled, &sh], &out, vec![]);
                    }
                    (true, false) => {
                        b.float(&sc, &[], &[scale as f32], false);
                        b.node("Mul", name, &[x, &sc], &out, vec![]);
                    }
                    (false, true) => {
                        b.float(&sh, &[], &[shift as f32], false);
                        b.node("Add", name, &[x, &sh], &out, vec![]);
                    }
                    (false, false) => b.node("Identity", name, &[x], &out, vec![]),
                }
            }
            Op::Concat => {
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                b.node("Concat", name, &refs, &out, vec![attr::int("axis", 1)]);
            }
            Op::SelectChannels { start, count } => {
                let (st, en, ax) = (pname("starts"), pname("ends"), pname("axes"));
                b.initializers
                    .push(onnx::i64_tensor(&st, &[1], &[start as i64]));
                b.initializers
                    .push(onnx::i64_tensor(&en, &[1], &[(start + count) as i64]));
                b.initializers.push(onnx::i64_tensor(&ax, &[1], &[1]));
                b.node("Slice", name, &[x, &st, &en, &ax], &out, vec![]);
            }
            Op::Upsample { scale, mode } => {
                let scales = pname("scales");
                let s = scale as f32;
                // Resize's scales are float32 whatever the data type.
                b.initializers
                    .push(onnx::f32_tensor(&scales, &[4], &[1.0, 1.0, s, s]));
                let attrs = match mode {
                    UpsampleMode::Nearest => vec![
                        attr::string("mode", "nearest"),
                        attr::string("coordinate_transformation_mode", "asymmetric"),
                        attr::string("nearest_mode", "floor"),
                    ],
                    UpsampleMode::Bilinear => vec![
                        attr::string("mode", "linear"),
                        attr::string("coordinate_transformation_mode", "half_pixel"),
                    ],
                };
                b.node("Resize", name, &[x, "", scales.as_str()], &out, attrs);
            }
            Op::PixelShuffle { scale } => {
                b.node(
                    "DepthToSpace",
                    name,
                    &[x],
                    &out,
                    vec![
                        attr::int("blocksize", scale as i64),
                        attr::string("mode", "CRD"),
                    ],
                );
            }
        }
        tensor.insert(node.name.as_str(), out);
    }
    if fp16 {
        let last_out = tensor[arch.output_node()].clone();
        b.nodes
            .push(cast("output.cast", &last_out, OUTPUT, DataType::Float));
    }

    let io = |c: usize| {
        onnx::tensor_type(
            DataType::Float,
            &[Err("N"), Ok(c as i64), Err("H"), Err("W")],
        )
    };
    let graph = onnx::GraphProto {
        name: arch.name.clone(),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![onnx::value_info(INPUT, io(arch.input_channels))],
        output: vec![onnx::value_info(OUTPUT, io(arch.output_channels))],
        doc_string: arch.summary(),
        ..Default::default()
    };
    Ok(onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(options.opset)],
        producer_name: options.producer_name.clone(),
        producer_version: options.producer_version.clone(),
        doc_string: options.doc_string.clone(),
        graph: Some(graph),
        metadata_props: options
            .metadata
            .iter()
            .map(|(k, v)| onnx::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldct_proto::arch::{Preset, RedcnnConfig};

    fn weights(arch: &Arch) -> HashMap<String, Vec<f32>> {
        arch.parameters()
            .into_iter()
            .map(|p| (p.name.clone(), vec![0.5; p.numel()]))
            .collect()
    }

    #[test]
    fn initializers_are_named_as_parameters_and_io_is_symbolic() {
        let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
            filters: 4,
            kernel: 3,
        }))
        .unwrap();
        let m = build_model(&arch, &weights(&arch), &WriterOptions::default()).unwrap();
        let g = m.graph.unwrap();
        for p in arch.parameters() {
            assert!(g.initializer.iter().any(|t| t.name == p.name), "{}", p.name);
        }
        assert_eq!(g.input[0].name, "input");
        assert_eq!(g.output[0].name, "output");
        assert_eq!(g.node.last().unwrap().output[0], "output");
        assert_eq!(m.ir_version, 10);
    }

    #[test]
    fn instance_norm_stays_in_float32_unless_asked_for_float64() {
        use ldct_proto::arch::{Norm, ResnetConfig};
        let doubles = |form: InstanceNormForm| {
            let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
                ngf: 4,
                n_blocks: 1,
                norm: Norm::InstanceAffine,
                ..Default::default()
            }))
            .unwrap();
            let opts = WriterOptions {
                instance_norm: form,
                ..WriterOptions::default()
            };
            let g = build_model(&arch, &weights(&arch), &opts)
                .unwrap()
                .graph
                .unwrap();
            let double = DataType::Double as i64;
            let casts = g
                .node
                .iter()
                .filter(|n| n.op_type == "Cast" && n.attribute.iter().any(|a| a.i == double))
                .count();
            let tensors = g
                .initializer
                .iter()
                .filter(|t| t.data_type == DataType::Double as i32)
                .count();
            casts + tensors
        };
        // Float32 by default: no activation is cast to double (3x its memory).
        assert_eq!(doubles(InstanceNormForm::default()), 0);
        assert_eq!(doubles(InstanceNormForm::Native), 0);
        assert!(doubles(InstanceNormForm::Float64) > 0);
    }

    #[test]
    fn missing_or_wrong_sized_weights_are_errors() {
        let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
            filters: 4,
            kernel: 3,
        }))
        .unwrap();
        let mut w = weights(&arch);
        w.remove("conv1.weight");
        let e = build_model(&arch, &w, &WriterOptions::default()).unwrap_err();
        assert!(e.to_string().contains("conv1.weight"), "{e}");
        let mut w = weights(&arch);
        w.insert("conv1.bias".into(), vec![0.0; 1]);
        let e = build_model(&arch, &w, &WriterOptions::default()).unwrap_err();
        assert!(e.to_string().contains("conv1.bias"), "{e}");
    }

    #[test]
    fn fp16_casts_at_the_edges() {
        let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
            filters: 4,
            kernel: 3,
        }))
        .unwrap();
        let opts = WriterOptions {
            precision: Precision::Fp16,
            ..Default::default()
        };
        let g = build_model(&arch, &weights(&arch), &opts)
            .unwrap()
            .graph
            .unwrap();
        assert_eq!(g.node.first().unwrap().op_type, "Cast");
        assert_eq!(g.node.last().unwrap().op_type, "Cast");
        assert_eq!(g.node.last().unwrap().output[0], "output");
        assert!(g
            .initializer
            .iter()
            .filter(|t| t.name.ends_with(".weight"))
            .all(|t| t.data_type == DataType::Float16 as i32));
    }
}
