//! Data loading: every error is precise and one line; CSV round trips; gzip and .npy.

mod common;

use hvae_host::data::{self, DataErrorKind, Dataset};
use std::io::Write;
use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load_err(text: &str) -> (DataErrorKind, String) {
    let (e, msg) = common::load_error("bad.csv", text.as_bytes(), data::load);
    (e.kind, msg)
}

#[test]
fn loads_features_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "ok.csv",
        "a,label,b\n1,3,2\n 0.5 , -1 ,1e-3\n\n4,7.0,5\n",
    );
    let d = data::load(&p).unwrap();
    assert_eq!(d.columns(), ["a", "b"]);
    assert_eq!(d.len(), 3);
    assert_eq!(d.dim(), 2);
    assert_eq!(d.features(), [1.0, 2.0, 0.5, 1e-3, 4.0, 5.0]);
    assert_eq!(d.labels(), Some(&[3i64, -1, 7][..]));
    assert_eq!(d.class_count(), 3);
    assert_eq!(d.row(1), [0.5, 1e-3]);
}

/// Loading `text` fails with a message ending with `suffix`, of a kind `is_kind`
/// accepts.
fn assert_load_err(text: &str, suffix: &str, is_kind: impl FnOnce(&DataErrorKind) -> bool) {
    let (kind, msg) = load_err(text);
    assert!(msg.ends_with(suffix), "{msg}");
    assert!(is_kind(&kind), "{kind:?}: {msg}");
}

#[test]
fn without_labels() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "x.csv", "x,y\n1,2\n");
    let d = data::load(&p).unwrap();
    assert_eq!(d.labels(), None);
    assert_eq!(d.class_count(), 0);
}

#[test]
fn missing_file() {
    common::assert_missing_file("/no/such/file.csv", data::load, |e| {
        matches!(e.kind, DataErrorKind::NotFound)
    });
}

#[test]
fn ragged_row_names_its_line() {
    // 64 columns in the header, 63 on line 17.
    let header: Vec<String> = (0..64).map(|i| format!("c{i}")).collect();
    let mut text = header.join(",") + "\n";
    for line in 2..=20 {
        let n = if line == 17 { 63 } else { 64 };
        text += &vec!["0"; n].join(",");
        text += "\n";
    }
    assert_load_err(&text, ": line 17: expected 64 fields, found 63", |k| {
        matches!(
            k,
            DataErrorKind::Ragged {
                line: 17,
                expected: 64,
                found: 63
            }
        )
    });
}

#[test]
fn non_numeric_cell_names_line_and_column() {
    assert_load_err(
        "a,b,label\n1,2,0\n3,x7,1\n",
        ": line 3, column 'b': 'x7' is not a number",
        |k| matches!(k, DataErrorKind::NotANumber { line: 3, .. }),
    );
}

#[test]
fn empty_cell() {
    assert_load_err("a,b\n1,\n", ": line 2, column 'b': empty cell", |k| {
        matches!(k, DataErrorKind::EmptyCell { line: 2, .. })
    });
}

#[test]
fn nan_and_infinite_cells() {
    for (cell, what) in [
        ("NaN", "'NaN'"),
        ("nan", "'nan'"),
        ("inf", "'inf'"),
        ("-Infinity", "'-Infinity'"),
        ("1e39", "'1e39'"),
    ] {
        assert_load_err(
            &format!("a,b\n1,2\n3,{cell}\n"),
            &format!(": line 3, column 'b': {what} is not a finite f32 value"),
            |k| matches!(k, DataErrorKind::NonFinite { line: 3, .. }),
        );
    }
}

#[test]
fn bad_label() {
    assert_load_err(
        "a,label\n1,2\n1,2.5\n",
        ": line 3, column 'label': '2.5' is not an integer label",
        |k| matches!(k, DataErrorKind::BadLabel { line: 3, .. }),
    );
    let (kind, _) = load_err("a,label\n1,cat\n");
    assert!(matches!(kind, DataErrorKind::BadLabel { line: 2, .. }));
}

#[test]
fn empty_inputs() {
    assert!(matches!(load_err("").0, DataErrorKind::NoHeader));
    assert!(matches!(load_err("a,b\n").0, DataErrorKind::NoRows));
    assert!(matches!(load_err("a,b\n\n\n").0, DataErrorKind::NoRows));
    assert!(matches!(
        load_err("label\n1\n").0,
        DataErrorKind::NoFeatures
    ));
    assert_load_err("a,b,a\n1,2,3\n", "line 1: column 'a' appears twice", |k| {
        matches!(k, DataErrorKind::DuplicateColumn(_))
    });
}

#[test]
fn invalid_utf8_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bin.csv");
    std::fs::write(&p, b"a,b\n1,2\n3,\xff\n").unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(matches!(e.kind, DataErrorKind::Csv { line: 3, .. }), "{e}");
}

#[test]
fn a_directory_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = data::load(dir.path()).unwrap_err();
    assert!(matches!(e.kind, DataErrorKind::Io(_)), "{e}");
    assert!(!e.to_string().contains('\n'));
}

fn sample() -> Dataset {
    Dataset::new(
        vec!["p".into(), "q".into(), "r".into()],
        vec![
            0.1,
            -0.0,
            1e-30,
            f32::MAX,
            f32::MIN_POSITIVE / 8.0, // subnormal
            -123.456,
            0.3333333,
            7.0,
            -1e10,
        ],
        Some(vec![2, 0, -5]),
    )
    .unwrap()
}

fn same_bits(a: &Dataset, b: &Dataset) {
    assert_eq!(a.columns(), b.columns());
    assert_eq!(a.labels(), b.labels());
    let bits = |d: &Dataset| d.features().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b));
}

#[test]
fn csv_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = sample();
    for name in ["rt.csv", "rt.csv.gz"] {
        let p = dir.path().join(name);
        data::write_csv(&p, &d).unwrap();
        let back = data::load(&p).unwrap();
        same_bits(&d, &back);
    }
    // The gzipped one really is gzipped.
    let raw = std::fs::read(dir.path().join("rt.csv.gz")).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b]);
    // Without labels, no label column is written.
    let nolab = Dataset::new(vec!["a".into()], vec![1.5, 2.5], None).unwrap();
    let mut buf = Vec::new();
    data::write_csv_to(&mut buf, &nolab).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), "a\n1.5\n2.5\n");
}

#[test]
fn gzip_is_recognised_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no-extension");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"a,label\n1,0\n2,1\n").unwrap();
    std::fs::write(&p, gz.finish().unwrap()).unwrap();
    let d = data::load(&p).unwrap();
    assert_eq!(d.features(), [1.0, 2.0]);
    // A damaged gzip stream is a read error, one line.
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 10);
    std::fs::write(&p, &bytes).unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn digits_ship_as_expected() {
    let d = data::load(&common::digits_path()).unwrap();
    assert_eq!((d.len(), d.dim()), (1797, 64));
    assert_eq!(d.class_count(), 10);
    assert_eq!(d.columns()[0], "pixel_0_0");
    assert!(d.features().iter().all(|&v| (0.0..=1.0).contains(&v)));
    // Values are k/16.
    assert!(d.features().iter().all(|&v| (v * 16.0).fract() == 0.0));
    // First row of scikit-learn's digits is a 0.
    assert_eq!(d.labels().unwrap()[0], 0);
    assert_eq!(d.row(0)[2], 5.0 / 16.0);
}

fn npy_bytes<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    shape: &[u64],
    values: &[T],
    order: npyz::Order,
) -> Vec<u8> {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .order(order)
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend(values.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    buf
}

#[test]
fn npy_f32_f64_and_fortran_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    std::fs::write(
        &p,
        npy_bytes(&[2, 3], &[1f32, 2., 3., 4., 5., 6.], npyz::Order::C),
    )
    .unwrap();
    let d = data::load(&p).unwrap();
    assert_eq!((d.len(), d.dim()), (2, 3));
    assert_eq!(d.features(), [1., 2., 3., 4., 5., 6.]);
    assert_eq!(d.columns(), ["x0", "x1", "x2"]);
    assert_eq!(d.labels(), None);

    std::fs::write(
        &p,
        npy_bytes(&[2, 3], &[1f64, 4., 2., 5., 3., 6.], npyz::Order::Fortran),
    )
    .unwrap();
    let d = data::load(&p).unwrap();
    assert_eq!(d.features(), [1., 2., 3., 4., 5., 6.]);
}

#[test]
fn npy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.npy");
    std::fs::write(&p, npy_bytes(&[4], &[1f32, 2., 3., 4.], npyz::Order::C)).unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(matches!(e.kind, DataErrorKind::NpyLayout(_)), "{e}");
    assert!(e.to_string().contains("1 dimensions"), "{e}");

    std::fs::write(&p, npy_bytes(&[2, 2], &[1i32, 2, 3, 4], npyz::Order::C)).unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(e.to_string().contains("not f32 or f64"), "{e}");

    std::fs::write(
        &p,
        npy_bytes(&[2, 2], &[1f32, 2., f32::NAN, 4.], npyz::Order::C),
    )
    .unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(
        matches!(e.kind, DataErrorKind::NpyNonFinite { row: 1, column: 0 }),
        "{e}"
    );

    std::fs::write(&p, npy_bytes::<f32>(&[0, 3], &[], npyz::Order::C)).unwrap();
    assert!(matches!(
        data::load(&p).unwrap_err().kind,
        DataErrorKind::NoRows
    ));

    // Truncated data.
    let mut b = npy_bytes(&[2, 2], &[1f32, 2., 3., 4.], npyz::Order::C);
    b.truncate(b.len() - 3);
    std::fs::write(&p, b).unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");

    // A header declaring 4 GB (found by the fuzzer, which ran out of memory on it): an
    // error, before anything of that size is allocated.
    let mut hostile = b"\x93NUMPY\x03\x00\x2c\xff\xff\xff".to_vec();
    hostile.extend([0xff; 44]);
    hostile.extend(b"2,10\n0\x1f\x8b");
    std::fs::write(&p, &hostile).unwrap();
    let e = data::load(&p).unwrap_err();
    assert!(e.to_string().contains("declared length 4294967084"), "{e}");
    let mut v1 = b"\x93NUMPY\x01\x00\xff\xff".to_vec();
    v1.extend([b' '; 32]);
    std::fs::write(&p, &v1).unwrap();
    // Version 1 lengths are at most 64 KiB: allowed, and the short file is an error.
    let e = data::load(&p).unwrap_err();
    assert!(e.to_string().contains("bad header"), "{e}");
}

#[test]
fn dataset_new_checks_sizes() {
    assert!(Dataset::new(vec![], vec![], None).is_err());
    assert!(Dataset::new(vec!["a".into(), "b".into()], vec![1.0], None).is_err());
    assert!(Dataset::new(vec!["a".into()], vec![f32::NAN], None).is_err());
    assert!(Dataset::new(vec!["a".into()], vec![1.0], Some(vec![])).is_err());
    assert!(Dataset::new(vec!["label".into()], vec![1.0], None).is_err());
}
