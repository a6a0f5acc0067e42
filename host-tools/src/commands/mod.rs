//! One module per subcommand: its clap arguments and its `run` function.

pub mod connection;
pub mod demo;
pub mod device_train;
pub mod eval;
pub mod export;
pub mod import;
pub mod inspect;
pub mod plot;
pub mod predict;
pub mod scenario;
pub mod suite;
pub mod train;
pub mod validate;

use crate::Error;
use std::io::Write;

/// Writes one formatted line of command output; a closed or failing stdout is an error
/// (exit status 1), never a panic.
pub(crate) fn emit(out: &mut dyn Write, text: std::fmt::Arguments<'_>) -> Result<(), Error> {
    out.write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| Error::Failed(format!("cannot write the output: {e}")))
}

/// `writeln!` for command output (see [`emit`]).
macro_rules! outln {
    ($out:expr) => { $crate::commands::emit($out, format_args!("")) };
    ($out:expr, $($arg:tt)*) => { $crate::commands::emit($out, format_args!($($arg)*)) };
}
pub(crate) use outln;
