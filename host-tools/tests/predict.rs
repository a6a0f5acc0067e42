//! `hvae predict` end to end: on the digits with a model trained by `hvae train`, every
//! row's answer is the core's `Model::segment` bit for bit, in CSV, JSON Lines and
//! `.npy`; stdin and stdout; column selection; the novelty mark; bad rows (stop with a
//! one-line error, or skip); carried `label` and `id` columns; a wrong feature count;
//! and 200 000 rows streamed through pipes.

mod common;

use common::{assert_one_line_error, run, run_stdin, s, Run};
use hvae::Shape;
use hvae::VecModel;
use hvae_host::data::{self, Dataset};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

/// A model trained on the digits by `hvae train --clusters 10` (once per test process,
/// in cargo's temporary directory for tests).
fn digits_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("predict-digits.hvae");
        let r = run(&[
            "train",
            "--quiet",
            "--data",
            s(&common::digits_path()),
            "--clusters",
            "10",
            "--out",
            s(&path),
        ]);
        assert_eq!(r.code, 0, "train: {}", r.stderr);
        path
    })
}

fn load_model(path: &Path) -> VecModel<f32> {
    hvae_host::model_io::load(path).unwrap().model
}

/// The core's answer for one row: label, probs, novelty, kappa, mu.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    label: usize,
    probs: Vec<f32>,
    novelty: f32,
    kappa: f32,
    mu: Vec<f32>,
}

/// `Model::segment` on every row, one at a time.
fn segment_each(model: &VecModel<f32>, d: &Dataset) -> Vec<Expected> {
    let mut work = vec![0.0f32; model.shape().work_len()];
    d.rows()
        .map(|row| {
            let seg = model.segment(row, &mut work).unwrap();
            Expected {
                label: seg.label,
                probs: seg.probs.to_vec(),
                novelty: seg.novelty(),
                kappa: seg.kappa,
                mu: seg.mu.to_vec(),
            }
        })
        .collect()
}

/// Header and records of a CSV text.
fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let header = rdr.headers().unwrap().iter().map(String::from).collect();
    let rows = rdr
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

fn f32_of(cell: &str) -> f32 {
    cell.parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not an f32"))
}

fn same_bits(got: f32, want: f32, what: &str) {
    assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got} != {want}");
}

/// Checks one CSV record (default columns, `true_label` last) against the core.
fn check_record(header: &[String], rec: &[String], want: &Expected, truth: i64) {
    let col = |name: &str| {
        let i = header.iter().position(|h| h == name).unwrap();
        rec[i].as_str()
    };
    assert_eq!(col("label").parse::<usize>().unwrap(), want.label);
    for (k, &p) in want.probs.iter().enumerate() {
        same_bits(f32_of(col(&format!("prob_{k}"))), p, "prob");
    }
    same_bits(f32_of(col("novelty")), want.novelty, "novelty");
    same_bits(f32_of(col("kappa")), want.kappa, "kappa");
    for (j, &m) in want.mu.iter().enumerate() {
        same_bits(f32_of(col(&format!("mu_{j}"))), m, "mu");
    }
    assert_eq!(col("true_label").parse::<i64>().unwrap(), truth);
}

fn default_header(k: usize, m: usize, extra: &[&str]) -> Vec<String> {
    let mut h = vec!["label".to_string()];
    h.extend((0..k).map(|i| format!("prob_{i}")));
    h.push("novelty".into());
    h.push("kappa".into());
    h.extend((0..m).map(|i| format!("mu_{i}")));
    h.extend(extra.iter().map(|e| e.to_string()));
    h
}

/// `hvae predict --model <model> --data <data>` with `extra` arguments after them.
fn predict(model: &Path, data: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["predict", "--model", s(model), "--data", s(data)];
    args.extend_from_slice(extra);
    run(&args)
}

/// The digits model, the digits and the core's answer for every row.
fn digits_answers() -> (&'static Path, Dataset, Vec<Expected>) {
    let model_path = digits_model();
    let d = data::load(&common::digits_path()).unwrap();
    let want = segment_each(&load_model(model_path), &d);
    (model_path, d, want)
}

/// Checks CSV records (default columns, `true_label` last) against the core's answers
/// for the rows `rows` of the data.
fn check_records(
    header: &[String],
    recs: &[Vec<String>],
    rows: impl IntoIterator<Item = usize>,
    want: &[Expected],
    truth: &[i64],
) {
    let mut n = 0;
    for (rec, i) in recs.iter().zip(rows) {
        check_record(header, rec, &want[i], truth[i]);
        n += 1;
    }
    assert_eq!(n, recs.len());
}

#[test]
fn digits_answers_are_the_cores_bit_for_bit() {
    let (model_path, d, want) = digits_answers();
    let digits = common::digits_path();

    let r = predict(model_path, &digits, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Nothing on a stderr that is not a terminal: no progress bar, no note.
    assert_eq!(r.stderr, "");
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(header, default_header(10, 16, &["true_label"]));
    assert_eq!(rows.len(), 1797);
    check_records(&header, &rows, 0.., &want, d.labels().unwrap());
    // The trained model clusters: every cluster is used.
    let mut used = [false; 10];
    want.iter().for_each(|w| used[w.label] = true);
    assert!(used.iter().all(|&u| u), "{used:?}");

    // Chunks of one row (odd, through the batch path's single-row branch) and of 7: the
    // same bytes.
    for chunk in ["1", "7"] {
        let again = predict(model_path, &digits, &["--chunk", chunk]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(again.stdout == r.stdout, "--chunk {chunk} differs");
    }
}

#[test]
fn stdin_to_stdout_and_file_outputs_agree() {
    let model_path = digits_model();
    let digits = common::digits_path();
    let by_file = predict(model_path, &digits, &[]);
    assert_eq!(by_file.code, 0, "{}", by_file.stderr);

    // Gzipped bytes on stdin, and plain CSV on stdin; `--out -` is stdout too.
    let gz = std::fs::read(&digits).unwrap();
    let r = run_stdin(&["predict", "--model", s(model_path), "--data", "-"], gz);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == by_file.stdout);
    let plain = digits_text_with(&[]);
    let r = run_stdin(
        &[
            "predict",
            "--model",
            s(model_path),
            "--data",
            "-",
            "--out",
            "-",
        ],
        plain.into_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == by_file.stdout);

    // A .csv file: the same text, and a line on stdout.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answers.csv");
    let r = predict(model_path, &digits, &["--out", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim_end(),
        format!("wrote 1797 rows x 30 columns to {}", out.display())
    );
    assert!(std::fs::read_to_string(&out).unwrap() == by_file.stdout);
}

#[test]
fn json_lines_and_npy_hold_the_same_values() {
    let (model_path, d, want) = digits_answers();
    let digits = common::digits_path();
    let truth = d.labels().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let json = dir.path().join("a.json");
    let r = predict(model_path, &digits, &["--out", s(&json)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&json).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1797);
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| f32_of(&x.to_string()))
            .collect()
    };
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = vec!["kappa", "label", "mu", "novelty", "probs", "true_label"];
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "{line}");
        let w = &want[i];
        assert_eq!(v["label"].as_u64().unwrap() as usize, w.label);
        assert_eq!(v["true_label"].as_i64().unwrap(), truth[i]);
        // Each number is parsed from its text as an f32 (serde_json reads f64).
        let p = floats(&v["probs"]);
        let m = floats(&v["mu"]);
        assert_eq!(p.len(), 10);
        assert_eq!(m.len(), 16);
        p.iter()
            .zip(&w.probs)
            .for_each(|(&a, &b)| same_bits(a, b, "prob"));
        m.iter()
            .zip(&w.mu)
            .for_each(|(&a, &b)| same_bits(a, b, "mu"));
        same_bits(f32_of(&v["novelty"].to_string()), w.novelty, "novelty");
        same_bits(f32_of(&v["kappa"].to_string()), w.kappa, "kappa");
    }

    let npy = dir.path().join("a.npy");
    let r = predict(
        model_path,
        &digits,
        &["--out", s(&npy), "--columns", "novelty,label,mu,true_label"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = std::fs::read(&npy).unwrap();
    // The header (patched in place) is a multiple of 64 bytes; numpy's rule.
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(header_len % 64, 0);
    assert_eq!(bytes.len(), header_len + 1797 * 19 * 4);
    let file = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(file.shape(), [1797, 19]);
    assert_eq!(file.order(), npyz::Order::C);
    let values: Vec<f32> = file.into_vec().unwrap();
    for (i, row) in values.chunks_exact(19).enumerate() {
        let w = &want[i];
        same_bits(row[0], w.novelty, "novelty");
        assert_eq!(row[1], w.label as f32);
        row[2..18]
            .iter()
            .zip(&w.mu)
            .for_each(|(&a, &b)| same_bits(a, b, "mu"));
        assert_eq!(row[18], truth[i] as f32);
    }

    // No text in a .npy: an id column cannot go there.
    let with_id = dir.path().join("id.csv");
    std::fs::write(&with_id, "id,a,b,c,d,e,f,g,h\nx,1,2,3,4,5,6,7,8\n").unwrap();
    let small = small_model(dir.path());
    let r = predict(
        &small,
        &with_id,
        &["--out", s(&npy), "--columns", "id,label"],
    );
    assert_one_line_error(&r, 2, "'id' column is text");
}

#[test]
fn columns_select_and_order() {
    let (model_path, d, want) = digits_answers();
    let digits = common::digits_path();
    let r = predict(
        model_path,
        &digits,
        &["--columns", "novelty,true_label,label"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(header, ["novelty", "true_label", "label"]);
    assert_eq!(rows.len(), 1797);
    for (i, rec) in rows.iter().enumerate() {
        same_bits(f32_of(&rec[0]), want[i].novelty, "novelty");
        assert_eq!(rec[1].parse::<i64>().unwrap(), d.labels().unwrap()[i]);
        assert_eq!(rec[2].parse::<usize>().unwrap(), want[i].label);
    }

    let r = predict(model_path, &digits, &["--columns", "mu"]);
    let (header, _) = parse_csv(&r.stdout);
    assert_eq!(
        header,
        (0..16).map(|j| format!("mu_{j}")).collect::<Vec<_>>()
    );

    let with = |extra: &[&str]| predict(model_path, &digits, extra);
    assert_one_line_error(&with(&["--columns", "label,label"]), 2, "'label' twice");
    assert_one_line_error(&with(&["--columns", "id"]), 2, "no 'id' column");
    assert_one_line_error(&with(&["--columns", "novel"]), 2, "--novelty-above");
    // Not a column at all: clap's usage error.
    let r = with(&["--columns", "colour"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("colour"), "{}", r.stderr);
}

#[test]
fn novelty_above_marks_exactly_the_rows_above() {
    let (model_path, _, want) = digits_answers();
    let mut sorted: Vec<f32> = want.iter().map(|w| w.novelty).collect();
    sorted.sort_by(f32::total_cmp);
    // A threshold equal to one row's novelty: that row is not above it.
    let t = sorted[sorted.len() * 3 / 4];
    let r = predict(
        model_path,
        &common::digits_path(),
        &[
            "--columns",
            "novelty,label",
            "--novelty-above",
            &t.to_string(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(header, ["novelty", "label", "novel"]);
    let mut marked = 0;
    for (i, rec) in rows.iter().enumerate() {
        let above = want[i].novelty > t;
        assert_eq!(rec[2], if above { "1" } else { "0" }, "row {i}");
        marked += usize::from(above);
    }
    let expected = want.iter().filter(|w| w.novelty > t).count();
    assert_eq!(marked, expected);
    assert!(expected > 300 && expected < 1797 / 4 + 1, "{expected}");
    assert!(want.iter().any(|w| w.novelty == t));
}

/// The digits' text with row `bad_rows[j]` (0-based data row) replaced by `lines[j]`.
fn digits_text_with(bad: &[(usize, &str)]) -> String {
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(common::digits_path()).unwrap()),
        &mut plain,
    )
    .unwrap();
    let mut lines: Vec<String> = plain.lines().map(String::from).collect();
    for &(row, text) in bad {
        lines[row + 1] = text.to_string();
    }
    lines.join("\n") + "\n"
}

#[test]
fn a_bad_row_stops_with_exit_2_and_skip_bad_skips_it() {
    let (model_path, d, want) = digits_answers();
    let truth = d.labels().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Data row 4 (line 6) has a word in its first cell; row 1000 (line 1002) is short.
    let row4 = {
        let t = digits_text_with(&[]);
        let line = t.lines().nth(5).unwrap().to_string();
        line.replacen("0", "zero", 1)
    };
    let text = digits_text_with(&[(4, &row4), (1000, "1,2,3")]);
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, &text).unwrap();

    // Stops at the first: one line naming line and column, exit 2; the rows before it
    // were written to stdout.
    let r = predict(model_path, &bad, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "hvae: error: {}: line 6, column 'pixel_0_0': 'zero' is not a number",
            bad.display()
        )
    );
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(rows.len(), 4);
    check_records(&header, &rows, 0.., &want, truth);
    // Into a file: nothing is written, no temporary file is left.
    let out = dir.path().join("out.csv");
    let r = predict(model_path, &bad, &["--out", s(&out)]);
    assert_one_line_error(&r, 2, "line 6");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // --skip-bad: one line per bad row and the count, every other row right.
    let r = predict(model_path, &bad, &["--skip-bad"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let err: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(err.len(), 3, "{}", r.stderr);
    assert!(err[0].starts_with("hvae: warning: "), "{}", err[0]);
    assert!(err[0].contains("line 6, column 'pixel_0_0'"), "{}", err[0]);
    assert!(
        err[1].contains("line 1002: expected 65 fields, found 3"),
        "{}",
        err[1]
    );
    assert!(err[0].ends_with("(row skipped)") && err[1].ends_with("(row skipped)"));
    assert_eq!(err[2], "hvae: note: skipped 2 bad rows of 1797");
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(rows.len(), 1795);
    let kept = (0..1797).filter(|&i| i != 4 && i != 1000);
    check_records(&header, &rows, kept, &want, truth);
}

/// An 8-input model with 4 clusters (deterministic weights, no training).
fn small_model(dir: &Path) -> PathBuf {
    let shape = Shape::new(8, &[6], 3, 4);
    common::write_model(dir, "small.hvae", &common::model(shape, 5))
}

#[test]
fn id_and_label_columns_are_carried_through() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path());
    let model = load_model(&model_path);
    // `id` between features, text with a comma and a quote; `label` last.
    let mut text = String::from("a,b,c,id,d,e,f,g,h,label\n");
    let mut features = Vec::new();
    let ids = ["s-001", "with, comma", "say \"hi\"", "", "42"];
    for (i, id) in ids.iter().enumerate() {
        let row: Vec<f32> = (0..8).map(|j| ((i * 8 + j) as f32 * 0.37).sin()).collect();
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        let quoted = format!("\"{}\"", id.replace('"', "\"\""));
        text.push_str(&format!(
            "{},{},{},{quoted},{},{},{},{},{},{}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            i as i64 - 1
        ));
        features.extend(row);
    }
    let input = dir.path().join("ids.csv");
    std::fs::write(&input, &text).unwrap();
    let names: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let d = Dataset::new(names, features, None).unwrap();
    let want = segment_each(&model, &d);

    let r = predict(&model_path, &input, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (header, rows) = parse_csv(&r.stdout);
    let mut expected = vec!["id".to_string()];
    expected.extend(default_header(4, 3, &["true_label"]));
    assert_eq!(header, expected);
    assert_eq!(rows.len(), ids.len());
    for (i, rec) in rows.iter().enumerate() {
        assert_eq!(rec[0], ids[i]);
        check_record(&header, rec, &want[i], i as i64 - 1);
    }

    // JSON Lines: the id as a string, the label as an integer.
    let json = dir.path().join("ids.jsonl");
    let r = predict(
        &model_path,
        &input,
        &["--out", s(&json), "--columns", "id,true_label,label"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&json).unwrap();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], ids[i]);
        assert_eq!(v["true_label"], i as i64 - 1);
        assert_eq!(v["label"].as_u64().unwrap() as usize, want[i].label);
    }

    // A .npy input: no label or id; the same answers.
    let npy = dir.path().join("x.npy");
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[ids.len() as u64, 8])
            .writer(std::fs::File::create(&npy).unwrap())
            .begin_nd()
            .unwrap();
        w.extend(d.features().iter().copied()).unwrap();
        w.finish().unwrap();
    }
    let r = predict(&model_path, &npy, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (header, rows) = parse_csv(&r.stdout);
    assert_eq!(header, default_header(4, 3, &[]));
    for (i, rec) in rows.iter().enumerate() {
        assert_eq!(rec[0].parse::<usize>().unwrap(), want[i].label);
        same_bits(f32_of(&rec[5]), want[i].novelty, "novelty");
    }
}

#[test]
fn a_wrong_feature_count_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path());
    let seven = dir.path().join("seven.csv");
    std::fs::write(&seven, "a,b,c,d,e,f,g\n1,2,3,4,5,6,7\n").unwrap();
    let r = predict(&model_path, &seven, &[]);
    assert_one_line_error(&r, 2, "expects 8 input features");
    assert!(r.stderr.contains("7 feature columns"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    // An `id` column is not a feature in predict: the message says so when that is the
    // difference.
    let with_id = dir.path().join("id.csv");
    std::fs::write(&with_id, "a,b,c,d,e,f,g,id\n1,2,3,4,5,6,7,8\n").unwrap();
    let r = predict(&model_path, &with_id, &[]);
    assert_one_line_error(&r, 2, "'id' column is an identifier");
    // The same error on the library side: the size check.
    let model = load_model(&model_path);
    let e =
        hvae_host::commands::predict::check_sizes(&model, &model_path, 7, false, "x").unwrap_err();
    assert!(matches!(e, hvae_host::Error::BadInput(_)), "{e:?}");
    assert_eq!(e.exit_code(), 2);
    // Headers only: no data row.
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "a,b,c,d,e,f,g,h\n").unwrap();
    let r = predict(&model_path, &empty, &[]);
    assert_one_line_error(&r, 2, "no data rows");
    // An unknown output extension.
    let r = predict(
        &model_path,
        &seven,
        &["--out", s(&dir.path().join("a.txt"))],
    );
    assert_one_line_error(&r, 2, "unknown output format");
}

#[test]
fn two_hundred_thousand_rows_stream_through_pipes() {
    const ROWS: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let model_path = small_model(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hvae"))
        .args([
            "predict",
            "--model",
            s(&model_path),
            "--data",
            "-",
            "--columns",
            "label,novelty,true_label",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Rows are generated while the answers are read: neither side holds the data.
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(&mut stdin);
        writeln!(w, "a,b,c,d,e,f,g,h,label").unwrap();
        for i in 0..ROWS {
            let x = i as f32;
            writeln!(
                w,
                "{},{},{},{},{},{},{},{},{}",
                (x * 0.1).sin(),
                (x * 0.2).cos(),
                (x * 0.3).sin(),
                (x * 0.05).cos(),
                (x * 0.7).sin(),
                (x * 0.11).cos(),
                (x * 0.13).sin(),
                (x * 0.17).cos(),
                i % 7
            )
            .unwrap();
        }
        w.flush().unwrap();
    });
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap().unwrap(), "label,novelty,true_label");
    let mut n = 0usize;
    for line in lines {
        let line = line.unwrap();
        let mut cells = line.split(',');
        let label: usize = cells.next().unwrap().parse().unwrap();
        assert!(label < 4, "{line}");
        let novelty = f32_of(cells.next().unwrap());
        assert!((0.0..=2.0).contains(&novelty), "{line}");
        assert_eq!(cells.next().unwrap(), (n % 7).to_string(), "row {n}");
        n += 1;
    }
    writer.join().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(err, "");
    assert_eq!(n, ROWS);
}
