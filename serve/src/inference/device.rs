//! Device selection and ONNX Runtime session creation.
//!
//! `--device cpu` uses the CPU execution provider. `--device cuda` registers the CUDA
//! execution provider with `error_on_failure`, so a model whose CUDA session cannot be
//! created is rejected (never silently run on the CPU). `--device auto` picks CUDA when
//! the loaded ONNX Runtime library has the CUDA execution provider *and* an NVIDIA GPU is
//! present; if a CUDA session then fails, the fallback to CPU is logged as a warning and
//! the model reports `cpu` as its device.

use std::path::Path;

use ort::ep::{self, ArenaExtendStrategy, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::config::{ArenaStrategy, Config, ConvAlgoSearch, DeviceChoice};

/// The device a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda { id: i32 },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { id } => write!(f, "cuda:{id}"),
        }
    }
}

/// Builds ONNX Runtime sessions for model files on the chosen device.
#[derive(Debug, Clone)]
pub struct SessionFactory {
    pub choice: DeviceChoice,
    /// The device sessions are created for first.
    pub device: Device,
    pub intra_threads: usize,
    /// ONNX Runtime's intra-op threads spin between operators (`--intra-op-spinning`).
    pub intra_op_spinning: bool,
    /// Never shrink ONNX Runtime's CPU memory arena (`--cpu-arena`).
    pub cpu_arena: bool,
    /// Batches up to this many pixels keep their arena memory; larger ones shrink the
    /// arena after they run (`--cpu-arena-keep-pixels`).
    pub arena_keep_pixels: usize,
    pub gpu_mem_limit: Option<usize>,
    pub arena_strategy: ArenaStrategy,
    /// cuDNN's convolution algorithm choice on CUDA (`--cudnn-conv-algo-search`).
    pub conv_algo_search: ConvAlgoSearch,
    /// Why `device` was chosen (logged at start).
    pub reason: String,
}

/// Is an NVIDIA GPU visible to this process (driver loaded, device node present)?
pub fn nvidia_gpu_present() -> bool {
    let driver = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    driver || Path::new("/dev/nvidia0").exists()
}

/// Does the loaded ONNX Runtime library have the CUDA execution provider?
pub fn cuda_ep_available() -> bool {
    ep::CUDA::is_available().unwrap_or(false)
}

impl SessionFactory {
    /// Resolves `--device` against the loaded ONNX Runtime and the machine.
    pub fn resolve(config: &Config) -> anyhow::Result<Self> {
        let has_ep = cuda_ep_available();
        let has_gpu = nvidia_gpu_present();
        let id = config.cuda_device_id;
        let (device, reason) = match config.device {
            DeviceChoice::Cpu => (Device::Cpu, "--device cpu".to_owned()),
            DeviceChoice::Cuda => {
                if !has_ep {
                    anyhow::bail!(
                        "--device cuda: the loaded ONNX Runtime library has no CUDA execution \
                         provider (a CPU-only build; point ORT_DYLIB_PATH at the library of \
                         onnxruntime-gpu)"
                    );
                }
                (Device::Cuda { id }, "--device cuda".to_owned())
            }
            DeviceChoice::Auto => match (has_ep, has_gpu) {
                (true, true) => (
                    Device::Cuda { id },
                    "--device auto: CUDA execution provider and an NVIDIA GPU found".to_owned(),
                ),
                (false, _) => (
                    Device::Cpu,
                    "--device auto: the ONNX Runtime library has no CUDA execution provider"
                        .to_owned(),
                ),
                (true, false) => (
                    Device::Cpu,
                    "--device auto: CUDA execution provider present but no NVIDIA GPU found"
                        .to_owned(),
                ),
            },
        };
        Ok(Self {
            choice: config.device,
            device,
            intra_threads: config.intra_threads,
            intra_op_spinning: config.intra_op_spinning,
            cpu_arena: config.cpu_arena,
            arena_keep_pixels: usize::try_from(config.cpu_arena_keep_pixels).unwrap_or(usize::MAX),
            gpu_mem_limit: config.gpu_mem_limit,
            arena_strategy: config.arena_strategy,
            conv_algo_search: config.cudnn_conv_algo_search,
            reason,
        })
    }

    /// A CPU-only factory (tests).
    pub fn cpu(intra_threads: usize) -> Self {
        Self {
            choice: DeviceChoice::Cpu,
            device: Device::Cpu,
            intra_threads,
            intra_op_spinning: true,
            cpu_arena: false,
            arena_keep_pixels: 8 * 512 * 512,
            gpu_mem_limit: None,
            arena_strategy: ArenaStrategy::NextPowerOfTwo,
            conv_algo_search: ConvAlgoSearch::Heuristic,
            reason: "cpu".into(),
        }
    }

    fn builder(&self) -> Result<ort::session::builder::SessionBuilder, String> {
        let rt = ldct_proto::runtime::init().map_err(|e| e.to_string())?;
        let mut b = Session::builder(&rt.environment)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| e.to_string())?;
        if !self.intra_op_spinning {
            b = b.with_intra_op_spinning(false).map_err(|e| e.to_string())?;
        }
        if self.intra_threads > 0 {
            b = b
                .with_intra_threads(self.intra_threads)
                .map_err(|e| e.to_string())?;
        }
        Ok(b)
    }

    fn cpu_session(&self, path: &Path) -> Result<Session, String> {
        let cpu = ep::CPU::default().with_arena_allocator(true);
        self.builder()?
            .with_execution_providers([cpu.build().error_on_failure()])
            .map_err(|e| format!("cannot configure the CPU execution provider: {e}"))?
            .commit_from_file(path)
            .map_err(|e| e.to_string())
    }

    fn cuda_session(&self, path: &Path, id: i32) -> Result<Session, String> {
        let mut cuda = ep::CUDA::default()
            .with_device_id(id)
            .with_arena_extend_strategy(match self.arena_strategy {
                ArenaStrategy::NextPowerOfTwo => ArenaExtendStrategy::NextPowerOfTwo,
                ArenaStrategy::SameAsRequested => ArenaExtendStrategy::SameAsRequested,
            })
            .with_conv_algorithm_search(match self.conv_algo_search {
                ConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                ConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                ConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
            });
        if let Some(limit) = self.gpu_mem_limit {
            cuda = cuda.with_memory_limit(limit);
        }
        self.builder()?
            .with_execution_providers([cuda.build().error_on_failure()])
            .map_err(|e| format!("cannot register the CUDA execution provider: {e}"))?
            .commit_from_file(path)
            .map_err(|e| e.to_string())
    }

    /// Above how many pixels a batch on `device` shrinks the arena after it runs
    /// (`None`: never; the CUDA arena has its own limit, `--gpu-mem-limit`).
    pub fn shrink_above(&self, device: Device) -> Option<usize> {
        match device {
            Device::Cpu if !self.cpu_arena => Some(self.arena_keep_pixels),
            _ => None,
        }
    }

    /// A session for `path` on the chosen device, with the device it really uses.
    pub fn session(&self, path: &Path) -> Result<(Session, Device), String> {
        match self.device {
            Device::Cpu => Ok((self.cpu_session(path)?, Device::Cpu)),
            Device::Cuda { id } => match self.cuda_session(path, id) {
                Ok(s) => Ok((s, Device::Cuda { id })),
                Err(e) if self.choice == DeviceChoice::Auto => {
                    tracing::warn!(
                        model = %path.display(),
                        error = %e,
                        "CUDA session failed: FALLING BACK TO CPU for this model"
                    );
                    Ok((self.cpu_session(path)?, Device::Cpu))
                }
                Err(e) => Err(format!("CUDA session (--device cuda): {e}")),
            },
        }
    }
}
