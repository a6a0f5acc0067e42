//! The items of a model compiled into a program: what an `hvae export --format rust`
//! file expands to. The exporter writes the values and one invocation of
//! [`exported_model!`](crate::exported_model) (`f32` parameters) or
//! [`exported_quant_model!`](crate::exported_quant_model) (the int8 model); the
//! constants and their checks are written here once.
//!
//! A shape is given as `(input, [hidden, ...], latent, clusters, activation, posterior,
//! likelihood)`, the kinds by their variant names ([`Activation`](crate::Activation),
//! [`Posterior`](crate::Posterior), [`Likelihood`](crate::Likelihood)). An array whose
//! length is not the one the shape implies does not compile.
//!
//! The writer of that source is here too (feature `alloc`): `rust_source` turns a
//! weight blob's bytes into it, for `hvae export --format rust` and for a build script
//! that generates the file from a committed blob (the firmware's `build.rs`).

#[cfg(feature = "alloc")]
mod source;
#[cfg(feature = "alloc")]
pub use source::rust_source;

/// `SHAPE` of an exported model, from the shape tuple of [`exported_model!`](crate::exported_model).
#[doc(hidden)]
#[macro_export]
macro_rules! __exported_shape {
    ($input:expr, [$($hidden:expr),+ $(,)?], $latent:expr, $clusters:expr,
     $act:ident, $post:ident, $lik:ident) => {
        /// Architecture of the exported model.
        pub const SHAPE: $crate::Shape = $crate::Shape::new($input, &[$($hidden),+], $latent, $clusters)
            .with_activation($crate::Activation::$act)
            .with_posterior($crate::Posterior::$post)
            .with_likelihood($crate::Likelihood::$lik)
            .checked();
    };
}

/// The items of an exported `f32` model: `SHAPE`, `PARAM_LEN` (`SHAPE.param_len()`),
/// `INFERENCE_PARAM_LEN` (`SHAPE.inference_param_len()`, the prefix inference needs),
/// `BLOB_CRC` (the CRC-32 of the weight blob of these parameters, the weights' identity)
/// and `PARAMS`, every parameter in [`crate::shape`] layout order.
///
/// ```
/// hvae::exported_model! {
///     shape: (2, [3], 2, 1, Relu, PowerSpherical, Gaussian),
///     blob_crc: 0x1234_5678,
///     params: [0.5; PARAM_LEN],
/// }
/// assert_eq!(PARAM_LEN, SHAPE.param_len());
/// assert_eq!(SHAPE.hidden(0), 3);
/// assert_eq!(BLOB_CRC, 0x1234_5678);
/// let model = hvae::Model::new(SHAPE, &PARAMS[..INFERENCE_PARAM_LEN]).unwrap();
/// assert_eq!(model.shape().clusters, 1);
/// ```
#[macro_export]
macro_rules! exported_model {
    (
        shape: ($($shape:tt)*),
        blob_crc: $crc:expr,
        params: $params:expr $(,)?
    ) => {
        $crate::__exported_shape!($($shape)*);
        /// Number of parameters, `SHAPE.param_len()`.
        pub const PARAM_LEN: usize = SHAPE.param_len();
        /// Parameters needed for inference, `SHAPE.inference_param_len()`.
        pub const INFERENCE_PARAM_LEN: usize = SHAPE.inference_param_len();
        /// CRC-32 of the weight blob of these parameters (the weights' identity).
        pub const BLOB_CRC: u32 = $crc;
        /// The parameters, in layout order.
        pub static PARAMS: [f32; PARAM_LEN] = $params;
    };
}

/// The items of an exported int8 model ([`crate::infer::quant`]): `SHAPE`,
/// `WEIGHT_LEN`, `INT_LEN` and `FLOAT_LEN` (what the shape implies), `BLOB_CRC` (the
/// CRC-32 of its int8 blob, the weights' identity) and the statics `WEIGHTS` (int8
/// weights: each hidden layer, then the direction head, row-major), `INTS` (the channels
/// `[bias, multiplier, shift]` of each hidden layer, then the direction head's biases)
/// and `FLOATS` (normalisation, scales, concentration head and segmenter, as
/// [`QuantLayout`](crate::infer::quant::QuantLayout) places them), to wrap with
/// [`QuantModel::new`](crate::QuantModel::new).
///
/// ```
/// hvae::exported_quant_model! {
///     shape: (2, [3], 2, 1, Relu, PowerSpherical, Gaussian),
///     blob_crc: 0x1234_5678,
///     weights: [1; WEIGHT_LEN],
///     ints: [0; INT_LEN],
///     floats: [0.5; FLOAT_LEN],
/// }
/// assert_eq!(WEIGHT_LEN, 2 * 3 + 3 * 2);
/// assert_eq!(INTS.len(), hvae::infer::quant::int_len(&SHAPE));
/// assert_eq!(BLOB_CRC, 0x1234_5678);
/// ```
#[macro_export]
macro_rules! exported_quant_model {
    (
        shape: ($($shape:tt)*),
        blob_crc: $crc:expr,
        weights: $weights:expr,
        ints: $ints:expr,
        floats: $floats:expr $(,)?
    ) => {
        $crate::__exported_shape!($($shape)*);
        /// int8 weights, `hvae::infer::quant::weight_len(&SHAPE)`.
        pub const WEIGHT_LEN: usize = $crate::infer::quant::weight_len(&SHAPE);
        /// `i32` values, `hvae::infer::quant::int_len(&SHAPE)`.
        pub const INT_LEN: usize = $crate::infer::quant::int_len(&SHAPE);
        /// `f32` values, `hvae::infer::quant::float_len(&SHAPE)`.
        pub const FLOAT_LEN: usize = $crate::infer::quant::float_len(&SHAPE);
        /// CRC-32 of the int8 weight blob of these values (the weights' identity).
        pub const BLOB_CRC: u32 = $crc;
        /// int8 weights: each hidden layer, then the direction head (row-major).
        pub static WEIGHTS: [i8; WEIGHT_LEN] = $weights;
        /// Channels `[bias, multiplier, shift]` of each hidden layer, then the direction
        /// head's biases.
        pub static INTS: [i32; INT_LEN] = $ints;
        /// Normalisation, scales, concentration head and segmenter
        /// (`hvae::infer::quant::QuantLayout`).
        pub static FLOATS: [f32; FLOAT_LEN] = $floats;
    };
}
