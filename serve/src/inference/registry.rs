//! The set of loaded models and versions, swapped atomically on reload, load and unload.
//!
//! A reload re-scans the models folder: a folder whose manifest and ONNX checksum are
//! unchanged keeps its loaded model (no new sessions); a new or changed folder is
//! loaded and checked (sessions, contract, smoke run, [`Warmup`]) before it is
//! published; a folder that fails keeps its previous model serving; a folder that is
//! gone is dropped. The new set replaces the old in one atomic store: requests already
//! holding a model (`Arc`) finish on it, later requests see the new set.
//!
//! The root is a folder of model folders, a folder of `NAME/VERSION/` model folders
//! (several versions of one model side by side; `--version-policy` says which are
//! served, and requests without a version get the highest served), or one model folder
//! (a `manifest.json` in the root itself, as KServe mounts a model at `/mnt/models`).
//! With an alias (`--model-name`) the one model is served under that name; an alias
//! over folders of several models is refused.
//!
//! The Open Inference Protocol's repository extension works by model name:
//! [`Registry::unload`] stops serving every version of a model (and later reloads keep
//! it unloaded), [`Registry::load`] re-scans that model's folders only and serves
//! them; other models are left exactly as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ldct_proto::model_dir::ModelDir;
use serde::Serialize;

use super::device::SessionFactory;
use super::model::LoadedModel;
use super::versions;
use super::warmup::Warmup;
use crate::config::VersionPolicy;
use crate::error::ServeError;
use crate::metrics::metrics;

/// Model name -> model (the version requests without a version get).
pub type ModelSet = BTreeMap<String, Arc<LoadedModel>>;

/// What is served.
#[derive(Debug, Default)]
pub struct Served {
    /// Name -> the highest served version.
    pub latest: ModelSet,
    /// Name -> every served version, lowest first.
    pub versions: BTreeMap<String, Vec<Arc<LoadedModel>>>,
}

impl Served {
    /// Every served model, every version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.versions.values().flatten()
    }

    fn from_models(models: Vec<Arc<LoadedModel>>) -> Self {
        let mut versions: BTreeMap<String, Vec<Arc<LoadedModel>>> = BTreeMap::new();
        for m in models {
            versions.entry(m.name().to_owned()).or_default().push(m);
        }
        let mut latest = ModelSet::new();
        for (name, list) in versions.iter_mut() {
            list.sort_by(|a, b| versions::compare(a.version(), b.version()));
            if let Some(top) = list.last() {
                latest.insert(name.clone(), top.clone());
            }
        }
        Served { latest, versions }
    }
}

pub struct Registry {
    root: PathBuf,
    factory: SessionFactory,
    sessions_per_model: usize,
    warmup: Warmup,
    alias: Option<String>,
    policy: VersionPolicy,
    served: ArcSwap<Served>,
    index: ArcSwap<Vec<IndexEntry>>,
    /// Names unloaded through the repository API: reloads leave them unloaded.
    unloaded: Mutex<BTreeSet<String>>,
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
    /// Models no longer served: folder gone, unloaded, or outside the version policy.
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

/// One model folder as the repository index shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable (empty when ready).
    pub reason: String,
}

fn model_ref(m: &LoadedModel) -> ModelRef {
    ModelRef {
        name: m.name().to_owned(),
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
            warmup: Warmup::none(),
            alias: None,
            policy: VersionPolicy::Latest(1),
            served: ArcSwap::from_pointee(Served::default()),
            index: ArcSwap::from_pointee(Vec::new()),
            unloaded: Mutex::new(BTreeSet::new()),
            reload_lock: Mutex::new(()),
        }
    }

    /// The shapes every new or changed model runs before it is published.
    pub fn with_warmup(mut self, warmup: Warmup) -> Self {
        self.warmup = warmup;
        self
    }

    /// Serves the one model under `alias` instead of its manifest's name.
    pub fn with_alias(mut self, alias: Option<String>) -> Self {
        self.alias = alias.filter(|a| !a.is_empty());
        self
    }

    /// Which versions of a model with several are served.
    pub fn with_version_policy(mut self, policy: VersionPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn factory(&self) -> &SessionFactory {
        &self.factory
    }

    /// What is served now (a snapshot: later reloads do not change it).
    pub fn snapshot(&self) -> Arc<Served> {
        self.served.load_full()
    }

    pub fn is_empty(&self) -> bool {
        self.served.load().latest.is_empty()
    }

    /// Every model folder of the last scan: served or not, and why not.
    pub fn index(&self) -> Arc<Vec<IndexEntry>> {
        self.index.load_full()
    }

    /// A model by name (its highest served version); without a name, the model named
    /// `default`, else the only one.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<LoadedModel>, ServeError> {
        let served = self.served.load();
        let set = &served.latest;
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

    /// Every served version of `model`'s name, lowest first (its own when the set has
    /// changed since the caller got it).
    pub fn versions_of(&self, model: &LoadedModel) -> Vec<String> {
        self.served
            .load()
            .versions
            .get(model.name())
            .map(|list| list.iter().map(|v| v.version().to_owned()).collect())
            .unwrap_or_else(|| vec![model.version().to_owned()])
    }

    /// A model by name and version; without a version, as [`Registry::get`].
    pub fn get_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, ServeError> {
        let latest = self.get(Some(name))?;
        let Some(v) = version else {
            return Ok(latest);
        };
        let served = self.served.load();
        let list = served.versions.get(name).map(Vec::as_slice).unwrap_or(&[]);
        list.iter()
            .find(|m| m.version() == v)
            .cloned()
            .ok_or_else(|| {
                ServeError::UnknownModel(format!(
                    "model {name:?} has no version {v:?} loaded; loaded: {}",
                    list.iter()
                        .map(|m| m.version().to_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Re-scans the folder and publishes the new set atomically (blocking: it creates
    /// ONNX Runtime sessions). Concurrent reloads run one after the other. Models
    /// unloaded through the repository API stay unloaded.
    pub fn reload(&self) -> ReloadReport {
        self.rescan(None)
    }

    /// The repository extension's load: serves model `name` again if it was unloaded,
    /// re-scanning its folders only (new and changed versions are loaded; other models
    /// are left as they are). An error when no version of it is served afterwards.
    pub fn load(&self, name: &str) -> Result<ReloadReport, ServeError> {
        self.unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let report = self.rescan(Some(name));
        if self.served.load().latest.contains_key(name) {
            return Ok(report);
        }
        let why: Vec<String> = report
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.dir, r.error))
            .collect();
        if why.is_empty() {
            Err(ServeError::UnknownModel(format!(
                "no model folder under {} holds model {name:?}",
                self.root.display()
            )))
        } else {
            Err(ServeError::BadRequest(format!(
                "model {name:?} failed to load: {}",
                why.join("; ")
            )))
        }
    }

    /// The repository extension's unload: every version of model `name` stops being
    /// served (requests already holding it finish on it) until [`Registry::load`].
    pub fn unload(&self, name: &str) -> Result<ReloadReport, ServeError> {
        let known = self.served.load().latest.contains_key(name)
            || self.index.load().iter().any(|e| e.name == name);
        if !known {
            return Err(ServeError::UnknownModel(format!("unknown model {name:?}")));
        }
        self.unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        Ok(self.rescan(Some(name)))
    }

    /// The model a folder whose manifest cannot be read is taken to hold: the alias, or
    /// its folder's name (`NAME` of `NAME/VERSION/`, else the folder's own).
    fn folder_model_name(&self, dir: &Path) -> String {
        if let Some(alias) = &self.alias {
            return alias.clone();
        }
        let named = match dir.parent() {
            Some(parent) if parent != self.root => parent,
            _ => dir,
        };
        named
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// The model folders under the root (none when it does not exist).
    fn model_dirs(&self, report: &mut ReloadReport) -> Vec<PathBuf> {
        if !self.root.is_dir() {
            return Vec::new();
        }
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
    }

    /// Scans the root and publishes what it finds. With `only`, the served models of
    /// other names stay exactly as they are (their folders are read for the index only).
    fn rescan(&self, only: Option<&str>) -> ReloadReport {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let unloaded = self
            .unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let old = self.served.load_full();
        let old_index = self.index.load_full();
        let mut by_dir: BTreeMap<PathBuf, Arc<LoadedModel>> =
            old.all().map(|m| (m.dir.clone(), m.clone())).collect();
        let mut report = ReloadReport::default();
        let mut next: Vec<Arc<LoadedModel>> = Vec::new();
        // Folders found and not served: why.
        let mut reasons: BTreeMap<PathBuf, String> = BTreeMap::new();
        // (dir, name, version) of every folder found, for the index.
        let mut listed: Vec<(PathBuf, String, String)> = Vec::new();
        let mine = |name: &str| only.is_none_or(|o| o == name);

        // 1. Every model folder's manifest and checksum.
        let mut found: BTreeMap<String, Vec<ModelDir>> = BTreeMap::new();
        for dir in self.model_dirs(&mut report) {
            match ModelDir::open(&dir) {
                Ok(md) => {
                    let name = self
                        .alias
                        .clone()
                        .unwrap_or_else(|| md.manifest.name.clone());
                    listed.push((dir, name.clone(), md.manifest.version.clone()));
                    found.entry(name).or_default().push(md);
                }
                Err(e) => {
                    let previous = by_dir.remove(&dir);
                    let label = previous
                        .as_ref()
                        .map_or_else(|| self.folder_model_name(&dir), |p| p.name().to_owned());
                    listed.push((dir.clone(), label.clone(), String::new()));
                    if !mine(&label) {
                        next.extend(previous);
                        continue;
                    }
                    reasons.insert(dir.clone(), e.to_string());
                    // An unloaded model is not kept serving on its previous folder.
                    let previous = match previous {
                        Some(p) if unloaded.contains(&label) => {
                            report.removed.push(model_ref(&p));
                            None
                        }
                        p => p,
                    };
                    self.reject(&mut report, &dir, e.to_string(), previous, &mut next);
                }
            }
        }
        let models_found: BTreeSet<String> = found
            .values()
            .flatten()
            .map(|md| md.manifest.name.clone())
            .collect();
        if let (Some(alias), true) = (&self.alias, models_found.len() > 1) {
            let error = format!(
                "--model-name {alias:?} serves one model, but {} holds folders of {} models \
                 ({})",
                self.root.display(),
                models_found.len(),
                models_found.into_iter().collect::<Vec<_>>().join(", ")
            );
            tracing::warn!(%error, "model folders rejected");
            for md in found.values().flatten() {
                reasons.insert(md.dir.clone(), error.clone());
                report.rejected.push(Rejected {
                    dir: md.dir.display().to_string(),
                    error: error.clone(),
                    kept: None,
                });
            }
            found.clear();
            by_dir.clear();
            next.clear();
        }

        // 2. Per model: the versions the policy serves, loaded or kept.
        for (name, mut list) in found {
            if !mine(&name) {
                for md in &list {
                    next.extend(by_dir.remove(&md.dir));
                }
                continue;
            }
            if unloaded.contains(&name) {
                for md in &list {
                    reasons.insert(md.dir.clone(), "unloaded".into());
                    if let Some(p) = by_dir.remove(&md.dir) {
                        tracing::info!(name = %name, version = %p.version(), "model unloaded");
                        report.removed.push(model_ref(&p));
                    }
                }
                continue;
            }
            list.sort_by(|a, b| versions::compare(&a.manifest.version, &b.manifest.version));
            // One folder per version: a second folder of the same version is refused.
            let mut unique: Vec<ModelDir> = Vec::new();
            for md in list {
                match unique
                    .iter()
                    .find(|u| u.manifest.version == md.manifest.version)
                {
                    Some(first) => {
                        let error = format!(
                            "model {name:?} version {:?} is already served from {}",
                            md.manifest.version,
                            first.dir.display()
                        );
                        reasons.insert(md.dir.clone(), error.clone());
                        let previous = by_dir.remove(&md.dir);
                        if let Some(p) = &previous {
                            report.removed.push(model_ref(p));
                        }
                        self.reject(&mut report, &md.dir, error, None, &mut next);
                    }
                    None => unique.push(md),
                }
            }
            let versions: Vec<&str> = unique
                .iter()
                .map(|md| md.manifest.version.as_str())
                .collect();
            let chosen = versions::select(&self.policy, &versions);
            for (md, serve) in unique.into_iter().zip(chosen) {
                let previous = by_dir.remove(&md.dir);
                if !serve {
                    reasons.insert(md.dir.clone(), "not served under --version-policy".into());
                    if let Some(p) = previous {
                        report.removed.push(model_ref(&p));
                    }
                    continue;
                }
                let dir = md.dir.clone();
                if let Err(error) = self.load_one(md, previous, &mut report, &mut next) {
                    reasons.insert(dir, error);
                }
            }
        }

        // 3. Served models whose folder is gone.
        for (_, gone) in by_dir {
            if !mine(gone.name()) {
                next.push(gone);
                continue;
            }
            tracing::info!(name = %gone.name(), dir = %gone.dir.display(), "model folder gone: model removed");
            report.removed.push(model_ref(&gone));
        }

        // The repository index: every folder found, ready or why not.
        let mut index: Vec<IndexEntry> = listed
            .into_iter()
            .map(|(dir, name, version)| {
                if let Some(m) = next.iter().find(|m| m.dir == dir) {
                    IndexEntry {
                        name,
                        version: m.version().to_owned(),
                        state: "READY",
                        reason: String::new(),
                    }
                } else {
                    let reason = reasons.remove(&dir).unwrap_or_else(|| {
                        old_index
                            .iter()
                            .find(|e| e.name == name && e.version == version)
                            .map_or_else(|| "not loaded".to_owned(), |e| e.reason.clone())
                    });
                    IndexEntry {
                        name,
                        version,
                        state: "UNAVAILABLE",
                        reason,
                    }
                }
            })
            .collect();
        index.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| versions::compare(&a.version, &b.version))
        });

        let served = Served::from_models(next);
        report.models = served.all().map(|m| model_ref(m)).collect();
        metrics().set_models(
            &served
                .all()
                .map(|m| {
                    (
                        m.name().to_owned(),
                        m.version().to_owned(),
                        m.device.to_string(),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let empty = served.latest.is_empty();
        self.served.store(Arc::new(served));
        self.index.store(Arc::new(index));
        if empty {
            tracing::warn!(
                models = %self.root.display(),
                "NO MODEL IS LOADED: /v2/health/ready answers not ready and denoise requests get 404 \
                 until a model folder (model.onnx + manifest.json) is added and POST /v1/models/reload is called"
            );
        }
        report
    }

    /// Loads one folder (or keeps its unchanged model) into `next`; the error when it
    /// failed (its previous model, if any, is kept).
    fn load_one(
        &self,
        md: ModelDir,
        previous: Option<Arc<LoadedModel>>,
        report: &mut ReloadReport,
        next: &mut Vec<Arc<LoadedModel>>,
    ) -> Result<(), String> {
        let dir = md.dir.clone();
        if let Some(p) = previous.as_ref().filter(|p| p.manifest == md.manifest) {
            report.unchanged.push(model_ref(p));
            next.push(p.clone());
            return Ok(());
        }
        let loaded =
            LoadedModel::from_model_dir(md, &self.factory, self.sessions_per_model, &self.warmup)
                .map(|m| match &self.alias {
                    Some(alias) => m.serve_as(alias),
                    None => m,
                });
        match loaded {
            Ok(model) => {
                let warmup_s = model.warmup.as_ref().map(|w| w.duration.as_secs_f64());
                if let Some(s) = warmup_s {
                    metrics()
                        .warmup_duration
                        .with_label_values(&[model.name()])
                        .observe(s);
                }
                let shapes = model.warmup.as_ref().map(|w| {
                    w.shapes
                        .iter()
                        .map(|s| format!("{}x{}x{}", s.batch, s.side, s.side))
                        .collect::<Vec<_>>()
                });
                tracing::info!(
                    name = %model.name(),
                    version = %model.manifest.version,
                    device = %model.device,
                    dir = %dir.display(),
                    warmup_shapes = ?shapes,
                    warmup_s,
                    "model loaded"
                );
                report.loaded.push(model_ref(&model));
                next.push(Arc::new(model));
                Ok(())
            }
            Err(error) => {
                self.reject(report, &dir, error.clone(), previous, next);
                Err(error)
            }
        }
    }

    /// Records a folder that failed; its previous model, if any, keeps serving.
    fn reject(
        &self,
        report: &mut ReloadReport,
        dir: &Path,
        error: String,
        previous: Option<Arc<LoadedModel>>,
        next: &mut Vec<Arc<LoadedModel>>,
    ) {
        tracing::warn!(dir = %dir.display(), %error, kept = previous.is_some(), "model folder rejected");
        report.rejected.push(Rejected {
            dir: dir.display().to_string(),
            error,
            kept: previous.as_deref().map(model_ref),
        });
        next.extend(previous);
    }
}
