//! Writing output files so that no partial file is ever left behind.
//!
//! [`write_atomic`] writes into a temporary file in the destination's directory (so the
//! final step is a rename within one file system), flushes and syncs it, and only then
//! renames it over the destination. If anything fails the temporary file is removed and
//! the destination is untouched (an older file of the same name stays as it was).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// An output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The destination.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: io::Error,
}

/// Writes `path` atomically: `body` writes the content into a buffered temporary file
/// that replaces `path` only once everything was written and synced. The new file gets
/// mode `0644` less the umask on Unix, like a file created by `File::create`.
pub fn write_atomic<F>(path: &Path, body: F) -> Result<(), WriteError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hvae-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let tmp = builder.tempfile_in(dir).map_err(err)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        body(&mut w).map_err(err)?;
        w.flush().map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Opens `path` for reading; `NotFound` keeps its kind so callers can say "no such file".
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Reads the whole of `path`, refusing anything larger than `max` bytes (`what` says
/// what the file should have been, for the message). Every failure is bad input.
pub fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, crate::Error> {
    use crate::Error::BadInput;
    use std::io::Read;
    let name = path.display();
    let file = open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BadInput(format!("{name}: no such file")),
        _ => BadInput(format!("{name}: cannot read: {e}")),
    })?;
    let mut bytes = Vec::new();
    // `take` bounds the read even if the file grows meanwhile.
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| BadInput(format!("{name}: cannot read: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(BadInput(format!(
            "{name}: larger than {max} bytes, not {what}"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_body_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        std::fs::write(&out, b"old").unwrap();
        let r = write_atomic(&out, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        });
        let e = r.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        write_bytes_atomic(&out, b"one").unwrap();
        write_bytes_atomic(&out, b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            // 0644 less the umask: readable by its owner, never executable.
            assert_eq!(mode & 0o711, 0o600);
        }
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("no/such/dir/out.bin");
        let e = write_bytes_atomic(&out, b"x").unwrap_err();
        assert!(e.to_string().starts_with("cannot write"), "{e}");
    }
}
