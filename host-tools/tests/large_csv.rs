//! A 100 MB CSV is read as a stream: the peak memory of loading it is about the parsed
//! `f32` matrix, not the text. Its own test binary (one test, one process), because the
//! measure is the process's peak resident set (`VmHWM`, Linux).
//!
//! The file has 16-character cells, so the text is 4.25 times the matrix: a loader that
//! held the text (or a line-per-row `String` list) would need > 100 MB more than one
//! that streams.

#![cfg(target_os = "linux")]

use hvae_host::data;
use std::io::{BufWriter, Write};

/// Kilobytes of a `/proc/self/status` field.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

#[test]
fn a_100_mb_csv_loads_in_bounded_memory() {
    const COLS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    {
        let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
        let header: Vec<String> = (0..COLS).map(|c| format!("f{c}")).collect();
        writeln!(w, "{},label", header.join(",")).unwrap();
        let mut written = 0usize;
        let mut row = 0u64;
        while written < 100 * 1024 * 1024 {
            let mut line = String::with_capacity(COLS * 17 + 4);
            for c in 0..COLS {
                // A deterministic 16-character cell, e.g. "-0.1234567890123".
                let v = ((row * 31 + c as u64 * 17) % 1000) as f64 / 1000.0 - 0.5;
                line.push_str(&format!("{v:+.13}"));
                line.push(',');
            }
            line.push_str(&format!("{}\n", row % 10));
            written += line.len();
            w.write_all(line.as_bytes()).unwrap();
            row += 1;
        }
        w.flush().unwrap();
    }
    let text = std::fs::metadata(&path).unwrap().len();
    let before = status_kib("VmRSS:");
    let d = data::load(&path).unwrap();
    let peak = status_kib("VmHWM:");
    let matrix = (d.len() * d.dim() * 4 + d.len() * 8) as u64;
    let grew = (peak.saturating_sub(before)) * 1024;
    println!(
        "text {:.1} MB, {} rows x {} features, matrix {:.1} MB, peak growth {:.1} MB",
        text as f64 / 1e6,
        d.len(),
        d.dim(),
        matrix as f64 / 1e6,
        grew as f64 / 1e6
    );
    assert!(text >= 100 * 1024 * 1024);
    assert_eq!(d.dim(), COLS);
    // The matrix, the growth of its vectors (at most doubling) and a few MB of buffers;
    // always well below the text itself.
    assert!(
        grew <= 2 * matrix + 16 * 1024 * 1024,
        "peak grew {grew} bytes for a {matrix}-byte matrix"
    );
    assert!(grew < text, "{grew} >= {text}");
    // Spot-check values: row 0, column 1 is (17 % 1000)/1000 - 0.5.
    assert!((d.row(0)[1] - (-0.483)).abs() < 1e-6);
}
