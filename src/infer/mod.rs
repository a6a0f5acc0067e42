//! Inference: the model over its flat parameter vector, the dense kernels it runs, and
//! the input normalisation.
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | [`Model`](model::Model): encode, segment, reconstruct, over a caller-owned workspace |
//! | [`quant`] | [`QuantModel`](quant::QuantModel): the int8 encoder (integer dense layers) with the `f32` segmenter; calibration and quantisation |
//! | [`exported`] | the items of a model compiled into a program ([`exported_model!`](crate::exported_model), [`exported_quant_model!`](crate::exported_quant_model)): what an `hvae export --format rust` file expands to, and `exported::rust_source` (feature `alloc`), the writer of that file from a weight blob |
//! | [`normalise`] | the per-feature offset and scale fitted to data, one rule for host and device |
//! | `nn` (private) | dense layers and activations over slices: the crate's only matrix code, shared by inference and training |
//! | `views` (private) | a parameter vector, a gradient and a workspace split once into named slices by a shape |

pub mod exported;
pub mod model;
pub(crate) mod nn;
pub mod normalise;
pub mod quant;
pub(crate) mod views;
