//! From a decoded slice to the network's output: submit to the batcher, wait (bounded by
//! the request timeout), and the shared HU <-> normalised steps.

use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;

use super::batcher::Batcher;
use super::model::LoadedModel;
use super::pixels::{self, Prepared};
use crate::error::ServeError;

/// Runs prepared slices of one model through the batcher; outputs are padded and
/// normalised like the inputs, in the same order. All slices are queued before any
/// is awaited, so a multi-slice request batches with itself. The slices' data moves
/// to the batcher (their sizes stay for [`pixels::finish_hu`]).
pub async fn run_prepared(
    batcher: &Batcher,
    timeout: Duration,
    model: &Arc<LoadedModel>,
    slices: &mut [Prepared],
) -> Result<Vec<Vec<f32>>, ServeError> {
    // The budget starts when the request is queued; a result that arrives after
    // it is a timeout too (tokio's timeout polls the result first, so without this
    // check a result already waiting would beat any deadline).
    let deadline = tokio::time::Instant::now() + timeout;
    let mut receivers = Vec::with_capacity(slices.len());
    for p in slices.iter_mut() {
        let data = std::mem::take(&mut p.data);
        receivers.push(batcher.submit(model.clone(), p.padded_h, p.padded_w, data)?);
    }
    let wait = async {
        let mut outs = Vec::with_capacity(receivers.len());
        for rx in receivers {
            let out = rx.await.map_err(|_| {
                ServeError::Internal("the inference thread dropped the request".into())
            })??;
            outs.push(out);
        }
        Ok(outs)
    };
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(_) if tokio::time::Instant::now() > deadline => Err(ServeError::Timeout {
            seconds: timeout.as_secs_f64(),
        }),
        Ok(r) => r,
        // Dropping the receivers tells the batcher to skip slices not yet run.
        Err(_) => Err(ServeError::Timeout {
            seconds: timeout.as_secs_f64(),
        }),
    }
}

/// HU in, HU out for one slice at `strength` (preparation is cheap enough to run
/// inline). Strength 0 returns the input without running the model.
pub async fn denoise_hu(
    batcher: &Batcher,
    timeout: Duration,
    model: &Arc<LoadedModel>,
    hu: &Array2<f32>,
    strength: f32,
) -> Result<Array2<f32>, ServeError> {
    let map = if strength == 0.0 {
        None
    } else {
        model.noise_map_value(hu)
    };
    denoise_hu_with_map(batcher, timeout, model, hu, strength, map).await
}

/// [`denoise_hu`] with the model's noise-map value of `hu` already known
/// ([`LoadedModel::noise_map_from`] the caller's own noise estimate).
pub async fn denoise_hu_with_map(
    batcher: &Batcher,
    timeout: Duration,
    model: &Arc<LoadedModel>,
    hu: &Array2<f32>,
    strength: f32,
    noise_map: Option<f32>,
) -> Result<Array2<f32>, ServeError> {
    if strength == 0.0 {
        return Ok(hu.clone());
    }
    let mut p =
        [pixels::prepare_hu(hu, &model.normaliser, &model.padding())?.with_noise_map(noise_map)];
    let out = run_prepared(batcher, timeout, model, &mut p).await?;
    let [p] = p;
    let first = out
        .first()
        .ok_or_else(|| ServeError::Internal("no output".into()))?;
    pixels::finish_hu(first, &p, hu, model.compose(strength))
}
