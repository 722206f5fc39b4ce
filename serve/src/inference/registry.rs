//! The set of loaded models, swapped atomically on reload.
//!
//! A reload re-scans the models folder: a folder whose manifest and ONNX checksum are
//! unchanged keeps its loaded model (no new sessions); a new or changed folder is
//! loaded and checked (sessions, contract, smoke run) before it is published; a folder
//! that fails keeps its previous model serving; a folder that is gone is dropped. The
//! new set replaces the old in one atomic store: requests already holding a model
//! (`Arc`) finish on it, later requests see the new set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ldct_proto::model_dir::ModelDir;
use serde::Serialize;

use super::device::SessionFactory;
use super::model::LoadedModel;
use crate::error::ServeError;
use crate::metrics::metrics;

/// Model name -> model.
pub type ModelSet = BTreeMap<String, Arc<LoadedModel>>;

pub struct Registry {
    root: PathBuf,
    factory: SessionFactory,
    sessions_per_model: usize,
    models: ArcSwap<ModelSet>,
    reload_lock: Mutex<()>,
}

/// What a (re)load did, folder by folder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Newly loaded (new folder, or a changed model that passed its checks).
    pub loaded: Vec<ModelRef>,
    /// Unchanged on disk: the loaded model was kept as is.
    pub unchanged: Vec<ModelRef>,
    /// Folders that failed; `kept` names the previous model still serving, if any.
    pub rejected: Vec<Rejected>,
    /// Models whose folder is gone.
    pub removed: Vec<ModelRef>,
    /// Models serving after the reload.
    pub models: Vec<ModelRef>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub dir: String,
    pub error: String,
    pub kept: Option<ModelRef>,
}

fn model_ref(m: &LoadedModel) -> ModelRef {
    ModelRef {
        name: m.manifest.name.clone(),
        version: m.manifest.version.clone(),
    }
}

impl Registry {
    /// An empty registry for `root` (call [`Registry::reload`] to load).
    pub fn new(root: PathBuf, factory: SessionFactory, sessions_per_model: usize) -> Self {
        Self {
            root,
            factory,
            sessions_per_model: sessions_per_model.max(1),
            models: ArcSwap::from_pointee(ModelSet::new()),
            reload_lock: Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn factory(&self) -> &SessionFactory {
        &self.factory
    }

    /// The current set (a snapshot: later reloads do not change it).
    pub fn snapshot(&self) -> Arc<ModelSet> {
        self.models.load_full()
    }

    pub fn is_empty(&self) -> bool {
        self.models.load().is_empty()
    }

    /// A model by name; without a name, the model named `default`, else the only one.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<LoadedModel>, ServeError> {
        let set = self.models.load();
        match name.filter(|n| !n.is_empty()) {
            Some(n) => set.get(n).cloned().ok_or_else(|| {
                ServeError::UnknownModel(if set.is_empty() {
                    format!("unknown model {n:?}: no model is loaded")
                } else {
                    format!(
                        "unknown model {n:?}; loaded: {}",
                        set.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            }),
            None => {
                if let Some(m) = set.get("default") {
                    return Ok(m.clone());
                }
                match set.len() {
                    1 => Ok(set.values().next().cloned().ok_or_else(|| {
                        ServeError::Internal("model set changed while reading".into())
                    })?),
                    0 => Err(ServeError::UnknownModel("no model is loaded".into())),
                    _ => Err(ServeError::BadRequest(format!(
                        "several models are loaded ({}): name one with ?model=NAME",
                        set.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }

    /// Re-scans the folder and publishes the new set atomically (blocking: it creates
    /// ONNX Runtime sessions). Concurrent reloads run one after the other.
    pub fn reload(&self) -> ReloadReport {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.models.load_full();
        let mut by_dir: BTreeMap<PathBuf, Arc<LoadedModel>> =
            old.values().map(|m| (m.dir.clone(), m.clone())).collect();
        let mut report = ReloadReport::default();
        let mut next = ModelSet::new();

        let dirs = if self.root.is_dir() {
            match ModelDir::candidates(&self.root) {
                Ok(d) => d,
                Err(e) => {
                    report.rejected.push(Rejected {
                        dir: self.root.display().to_string(),
                        error: e.to_string(),
                        kept: None,
                    });
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };

        for dir in dirs {
            let previous = by_dir.remove(&dir);
            let outcome = ModelDir::open(&dir)
                .map_err(|e| e.to_string())
                .and_then(|md| match &previous {
                    Some(p) if p.manifest == md.manifest => Ok((p.clone(), false)),
                    _ => LoadedModel::from_model_dir(md, &self.factory, self.sessions_per_model)
                        .map(|m| (Arc::new(m), true)),
                });
            let (model, fresh) = match outcome {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, kept = previous.is_some(), "model folder rejected");
                    report.rejected.push(Rejected {
                        dir: dir.display().to_string(),
                        error,
                        kept: previous.as_deref().map(model_ref),
                    });
                    match previous {
                        Some(p) => (p, false),
                        None => continue,
                    }
                }
            };
            let name = model.manifest.name.clone();
            if let Some(other) = next.get(&name) {
                let error = format!(
                    "model name {name:?} is already served from {}",
                    other.dir.display()
                );
                tracing::warn!(dir = %dir.display(), %error, "model folder rejected");
                report.rejected.push(Rejected {
                    dir: dir.display().to_string(),
                    error,
                    kept: None,
                });
                continue;
            }
            if fresh {
                tracing::info!(
                    name = %model.manifest.name,
                    version = %model.manifest.version,
                    device = %model.device,
                    dir = %dir.display(),
                    "model loaded"
                );
                report.loaded.push(model_ref(&model));
            } else if !report
                .rejected
                .iter()
                .any(|r| r.dir == dir.display().to_string())
            {
                report.unchanged.push(model_ref(&model));
            }
            next.insert(name, model);
        }
        for gone in by_dir.values() {
            tracing::info!(name = %gone.manifest.name, dir = %gone.dir.display(), "model folder gone: model removed");
            report.removed.push(model_ref(gone));
        }
        report.models = next.values().map(|m| model_ref(m)).collect();
        metrics().set_models(
            &next
                .values()
                .map(|m| {
                    (
                        m.manifest.name.clone(),
                        m.manifest.version.clone(),
                        m.device.to_string(),
                    )
                })
                .collect::<Vec<_>>(),
        );
        self.models.store(Arc::new(next));
        if report.models.is_empty() {
            tracing::warn!(
                models = %self.root.display(),
                "NO MODEL IS LOADED: /v2/health/ready answers not ready and denoise requests get 404 \
                 until a model folder (model.onnx + manifest.json) is added and POST /v1/models/reload is called"
            );
        }
        report
    }
}
