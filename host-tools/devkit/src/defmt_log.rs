//! The firmware's log as text: the device sends defmt frames (format-string indices and
//! arguments, rzCOBS-framed) to semihosting stdout, i.e. qemu's stdout; the format strings
//! are in the ELF's `.defmt` section. [`decode`] turns such a stream into lines.
//!
//! [`crate::qemu`] decodes every log it reads with it; `hvae-firmware-host decode` decodes
//! a log captured earlier.

use std::io::Read;

/// Reads the firmware's raw log from `input` to its end and calls `line` with each log
/// line as it arrives: a `println!` frame as its text, a frame with a level as the level
/// and the text (`INFO  cluster: ...`, `ERROR panic at ...`). Bytes that are not a valid
/// frame (a corrupted or cut stream) are skipped up to the next frame, with one
/// `(defmt: malformed frame skipped)` line; a frame cut short at the end of the stream is
/// dropped. An ELF without a defmt table (a program that logs as plain text) has its
/// output passed through line by line.
///
/// Errors: `elf` is not an ELF, or its defmt table is unreadable or of another defmt
/// version; reading `input` fails.
pub fn decode(elf: &[u8], mut input: impl Read, mut line: impl FnMut(&str)) -> Result<(), String> {
    let table = defmt_decoder::Table::parse(elf).map_err(|e| format!("defmt table: {e}"))?;
    let Some(table) = table else {
        return pass_through(input, line);
    };
    let recovers = table.encoding().can_recover();
    let mut decoder = table.new_stream_decoder();
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the log: {e}")),
        };
        decoder.received(&buf[..n]);
        loop {
            match decoder.decode() {
                Ok(frame) => {
                    let text = frame.display_message().to_string();
                    match frame.level() {
                        None => line(&text),
                        Some(level) => {
                            line(&format!("{:<5} {text}", level.as_str().to_uppercase()))
                        }
                    }
                }
                Err(defmt_decoder::DecodeError::UnexpectedEof) => break,
                // rzCOBS (defmt's default) resynchronises at the next frame boundary.
                Err(defmt_decoder::DecodeError::Malformed) if recovers => {
                    line("(defmt: malformed frame skipped)")
                }
                Err(defmt_decoder::DecodeError::Malformed) => {
                    return Err("malformed defmt frame (raw encoding: cannot resynchronise)".into())
                }
            }
        }
    }
}

/// Lines of a plain-text stream.
fn pass_through(input: impl Read, mut line: impl FnMut(&str)) -> Result<(), String> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(input);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                let text = String::from_utf8_lossy(&bytes);
                line(text.trim_end_matches(['\n', '\r']));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the log: {e}")),
        }
    }
}
