//! A real board on a serial port: the path opened by the `serialport` crate (raw mode,
//! 8N1, the given baud rate) with a short read timeout, so that the link's reader thread
//! notices when the session ends.

use hvae_devkit::Link;
use std::time::Duration;

/// Opens `path` at `baud` and returns the link to it.
pub fn open(path: &str, baud: u32) -> Result<Link, String> {
    let port = serialport::new(path, baud)
        .timeout(Duration::from_millis(100))
        .open()
        .map_err(|e| format!("cannot open serial port {path}: {e}"))?;
    let reader = port
        .try_clone()
        .map_err(|e| format!("cannot use serial port {path}: {e}"))?;
    Ok(Link::new(format!("serial {path}"), reader, port))
}
