//! Inference, apart from HTTP: the device and ONNX Runtime sessions ([`device`]), a
//! loaded model folder ([`model`]), the set of loaded models ([`registry`]) and the
//! order and policy of their versions ([`versions`]), the bounded queue and dynamic
//! batching on inference threads ([`batcher`]), submit-and-wait with the request
//! timeout ([`pipeline`]), the shapes a model runs before it is published
//! ([`warmup`]) and the pixel steps of the pixel contract ([`pixels`]: HU <->
//! normalised, reflection padding, crop).

pub mod batcher;
pub mod device;
pub mod model;
pub mod pipeline;
pub mod pixels;
pub mod registry;
pub mod versions;
pub mod warmup;
