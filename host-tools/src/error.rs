//! The tool's error type: every failure is one line of text and an exit status.
//!
//! Exit statuses: `0` success, `2` bad input (a data or model file that cannot be read
//! or used, arguments that do not fit the data), `1` any other failure (an output that
//! cannot be written, a model that fails on the data). Clap's own usage errors also exit
//! with `2`.

use crate::data::DataError;
use crate::fsio::WriteError;
use crate::model_io::ModelFileError;

/// Exit status for bad input: unreadable or unusable data or model files, bad arguments.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for every other failure.
pub const EXIT_FAILURE: u8 = 1;

/// Why a command failed. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file could not be read or parsed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A model file could not be read or is not a valid model.
    #[error(transparent)]
    Model(#[from] ModelFileError),
    /// Readable input that cannot be used as asked (sizes that disagree, too many
    /// clusters for the rows, ...).
    #[error("{0}")]
    BadInput(String),
    /// An output file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Data(_) | Error::Model(_) | Error::BadInput(_) => EXIT_BAD_INPUT,
            Error::Write(_) | Error::Failed(_) => EXIT_FAILURE,
        }
    }

    /// The message on one line (any line break a nested error carries becomes a space).
    pub fn one_line(&self) -> String {
        one_line(&self.to_string())
    }
}

/// `s` with every run of line breaks and the whitespace around them replaced by one
/// space.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\r\n\nc "), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
