//! Model files: the core's weight blob ([`hvae::store::blob`]) on disk.
//!
//! [`load`] reads a file, checks it with [`hvae::store::blob::read_shape`] (magic, version,
//! header, length, CRC, kinds and sizes) and [`hvae::store::blob::read_params`] (every value
//! finite) and builds a [`VecModel`]. Anything wrong is a [`ModelFileError`] whose
//! message is one line naming the file. [`save`] writes the blob atomically.

use crate::fsio::{self, WriteError};
use hvae::infer::model::{Model, ModelError, VecModel};
use hvae::store::blob::{self, BlobError};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// A model read from a file, with the identity of its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedModel {
    /// The model (full parameter vector, decoder included).
    pub model: VecModel<f32>,
    /// CRC-32 of the blob (its trailer): what a device reports for these weights.
    pub crc: u32,
    /// Size of the file in bytes.
    pub bytes: usize,
}

/// Why a model file could not be loaded. `Display` is one line: `FILE: what is wrong`.
#[derive(Debug)]
pub struct ModelFileError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub kind: ModelFileErrorKind,
}

/// What is wrong with a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileErrorKind {
    /// The file does not exist.
    #[error("no such file")]
    NotFound,
    /// Reading failed.
    #[error("cannot read: {0}")]
    Io(io::Error),
    /// Larger than any weight blob can be.
    #[error("not an hvae weight blob ({0} bytes is larger than any model)")]
    TooLarge(u64),
    /// The blob parser rejected the bytes.
    #[error("{0}")]
    Blob(BlobError),
    /// The parameters do not form a model.
    #[error("{0}")]
    Model(ModelError),
}

impl fmt::Display for ModelFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.kind)
    }
}

impl std::error::Error for ModelFileError {}

/// Largest blob: header, `u32::MAX` parameters, CRC.
const MAX_BLOB: u64 = blob::HEADER_LEN as u64 + 4 * u32::MAX as u64 + 4;

/// Loads the model in `path`.
pub fn load(path: &Path) -> Result<LoadedModel, ModelFileError> {
    let (bytes, err) = read_file(path)?;
    from_bytes(&bytes).map_err(err)
}

/// An int8 model read from a file (format version 2).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedInt8 {
    /// The model.
    pub model: crate::quant::QuantVecModel,
    /// CRC-32 of the blob.
    pub crc: u32,
    /// Size of the file in bytes.
    pub bytes: usize,
}

/// Loads the int8 model in `path`.
pub fn load_int8(path: &Path) -> Result<LoadedInt8, ModelFileError> {
    let (bytes, err) = read_file(path)?;
    let (model, crc) = crate::quant::from_bytes(&bytes)
        .map_err(ModelFileErrorKind::Blob)
        .map_err(err)?;
    Ok(LoadedInt8 {
        model,
        crc,
        bytes: bytes.len(),
    })
}

/// True when `e` says the file is an int8 blob (read it with [`load_int8`]).
pub fn is_int8(e: &ModelFileError) -> bool {
    matches!(
        e.kind,
        ModelFileErrorKind::Blob(BlobError::UnsupportedVersion(blob::VERSION_INT8))
    )
}

/// The bytes of a model file, and how to name the file in an error.
#[allow(clippy::type_complexity)]
fn read_file(
    path: &Path,
) -> Result<(Vec<u8>, impl Fn(ModelFileErrorKind) -> ModelFileError), ModelFileError> {
    let name = path.display().to_string();
    let err = move |kind| ModelFileError {
        file: name.clone(),
        kind,
    };
    let file = fsio::open(path).map_err(|e| {
        err(match e.kind() {
            io::ErrorKind::NotFound => ModelFileErrorKind::NotFound,
            _ => ModelFileErrorKind::Io(e),
        })
    })?;
    let len = file
        .metadata()
        .map_err(|e| err(ModelFileErrorKind::Io(e)))?
        .len();
    if len > MAX_BLOB {
        return Err(err(ModelFileErrorKind::TooLarge(len)));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while being read.
    file.take(MAX_BLOB + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(ModelFileErrorKind::Io(e)))?;
    Ok((bytes, err))
}

/// Parses a blob held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<LoadedModel, ModelFileErrorKind> {
    let shape = blob::read_shape(bytes).map_err(ModelFileErrorKind::Blob)?;
    let mut params = vec![0.0f32; shape.param_len()];
    let crc = blob::read_params(bytes, &shape, &mut params).map_err(ModelFileErrorKind::Blob)?;
    let model = Model::new(shape, params).map_err(ModelFileErrorKind::Model)?;
    Ok(LoadedModel {
        model,
        crc,
        bytes: bytes.len(),
    })
}

/// The blob of `model` (which must carry its decoder: a blob always holds every
/// parameter).
pub fn to_bytes<S: AsRef<[f32]>>(model: &Model<f32, S>) -> Result<Vec<u8>, BlobError> {
    let shape = model.shape();
    let mut out = vec![0u8; blob::blob_len(shape)];
    let n = blob::write(shape, model.params(), &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Why a model could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The model cannot be encoded (e.g. an inference-only model without its decoder).
    #[error("cannot encode the model: {0}")]
    Encode(BlobError),
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Saves `model` to `path` as a blob, atomically (a temporary file renamed into place;
/// no partial file is left on failure). Returns the blob's CRC.
pub fn save<S: AsRef<[f32]>>(path: &Path, model: &Model<f32, S>) -> Result<u32, SaveError> {
    let bytes = to_bytes(model).map_err(SaveError::Encode)?;
    fsio::write_bytes_atomic(path, &bytes)?;
    Ok(crc_of(&bytes))
}

/// The CRC of a blob (its last four bytes, little-endian).
pub fn crc_of(blob_bytes: &[u8]) -> u32 {
    blob_bytes
        .last_chunk::<4>()
        .map_or(0, |b| u32::from_le_bytes(*b))
}
