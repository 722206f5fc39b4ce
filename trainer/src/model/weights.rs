//! Weights as safetensors, under exactly the architecture's parameter names.
//!
//! The file holds every parameter and buffer of [`Arch::parameters`] as float32
//! (whatever dtype the network runs in), nothing else. Loading checks that every
//! name is present with its shape and that there is no other tensor, and reports
//! all problems at once.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{ModelError, Network};

/// File name of the architecture in a run or checkpoint folder.
pub const ARCH_FILE: &str = "arch.json";
/// File name of the weights in a run or checkpoint folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// How a set of tensors differs from an architecture's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightsMismatch {
    /// Where the tensors came from (a path).
    pub source: String,
    /// Parameters of the architecture with no tensor.
    pub missing: Vec<String>,
    /// `(name, expected shape, found shape)`.
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors that are no parameter of the architecture.
    pub unexpected: Vec<String>,
}

impl WeightsMismatch {
    pub(crate) fn single(source: &str, name: &str, expected: &[usize], found: &[usize]) -> Self {
        Self {
            source: source.into(),
            wrong_shape: vec![(name.into(), expected.to_vec(), found.to_vec())],
            ..Default::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.wrong_shape.is_empty() && self.unexpected.is_empty()
    }
}

impl std::error::Error for WeightsMismatch {}

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let list = |v: Vec<String>| {
            let more = v.len().saturating_sub(SHOWN);
            let mut s = v.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
            if more > 0 {
                s.push_str(&format!(" and {more} more"));
            }
            s
        };
        write!(
            f,
            "the weights in {} do not match the architecture:",
            self.source
        )?;
        if !self.missing.is_empty() {
            write!(
                f,
                " {} missing ({});",
                self.missing.len(),
                list(self.missing.clone())
            )?;
        }
        if !self.wrong_shape.is_empty() {
            let v = self
                .wrong_shape
                .iter()
                .map(|(n, e, g)| format!("{n}: expected {e:?}, found {g:?}"))
                .collect();
            write!(
                f,
                " {} of the wrong shape ({});",
                self.wrong_shape.len(),
                list(v)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                " {} unexpected ({});",
                self.unexpected.len(),
                list(self.unexpected.clone())
            )?;
        }
        Ok(())
    }
}

impl Network {
    /// Every parameter and buffer as a float32 CPU tensor, by name, in
    /// architecture order.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        self.parameters()
            .map(|(s, v)| {
                Ok((
                    s.name.clone(),
                    v.as_tensor()
                        .detach()
                        .to_device(&Device::Cpu)?
                        .to_dtype(DType::F32)?,
                ))
            })
            .collect()
    }

    /// Sets every parameter and buffer from `tensors` (any float dtype, any
    /// device), which must hold exactly the architecture's names and shapes;
    /// nothing is changed otherwise. `source` names them in errors.
    pub fn load_state(
        &self,
        tensors: &HashMap<String, Tensor>,
        source: &str,
    ) -> Result<(), ModelError> {
        let mut problems = WeightsMismatch {
            source: source.into(),
            ..Default::default()
        };
        for (spec, _) in self.parameters() {
            match tensors.get(&spec.name) {
                None => problems.missing.push(spec.name.clone()),
                Some(t) if t.dims() != spec.shape.as_slice() => problems.wrong_shape.push((
                    spec.name.clone(),
                    spec.shape.clone(),
                    t.dims().to_vec(),
                )),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            self.parameters().map(|(s, _)| s.name.as_str()).collect();
        problems.unexpected = tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        problems.unexpected.sort();
        if !problems.is_empty() {
            return Err(problems.into());
        }
        for (spec, var) in self.parameters() {
            let t = tensors[&spec.name]
                .to_dtype(self.dtype)?
                .to_device(&self.device)?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// Writes every parameter and buffer as float32 safetensors under the
    /// architecture's names.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let map: HashMap<String, Tensor> = self.state()?.into_iter().collect();
        candle_core::safetensors::save(&map, path.as_ref())?;
        Ok(())
    }

    /// Loads weights written by [`Network::save_safetensors`] (or any file with
    /// exactly the architecture's names and shapes).
    pub fn load_safetensors(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such weights file"),
            });
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        self.load_state(&tensors, &path.display().to_string())
    }

    /// Loads the weights of an exported float32 `model.onnx`: ldct-export names its
    /// initializers as the parameters; the graph's other initializers (pads, constants)
    /// are not parameters and are left out. Every parameter must be there with its shape.
    pub fn load_onnx(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        use prost::Message;
        let path = path.as_ref();
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: source.clone(),
            source: e,
        })?;
        let model = ldct_proto::onnx::ModelProto::decode(bytes.as_slice())
            .map_err(|e| ModelError::Unsupported(format!("{source}: not an ONNX model: {e}")))?;
        let floats = ldct_proto::onnx::f32_initializers(&model)
            .map_err(|e| ModelError::Unsupported(format!("{source}: {e}")))?;
        let mut tensors = HashMap::new();
        for (spec, _) in self.parameters() {
            if let Some((dims, values)) = floats.get(&spec.name) {
                let t = Tensor::from_slice(values, dims.as_slice(), &Device::Cpu)?;
                tensors.insert(spec.name.clone(), t);
            }
        }
        self.load_state(&tensors, &source)
    }

    /// Loads weights from `path`: a `.safetensors` file, an exported `.onnx` file, a
    /// model folder (its `model.onnx`) or a run folder (its `weights.safetensors`).
    pub fn load_weights_from(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        if path.is_dir() {
            let onnx = path.join("model.onnx");
            return if onnx.is_file() {
                self.load_onnx(onnx)
            } else {
                self.load_safetensors(path.join(WEIGHTS_FILE))
            };
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => self.load_onnx(path),
            _ => self.load_safetensors(path),
        }
    }
}
