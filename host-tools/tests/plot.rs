//! `hvae plot`: the PNG has the requested size and really shows the clusters and curves
//! (pixel colour counts, every centre's colour present), and bad input is a one-line
//! error with exit status 2 and no file.

mod common;

use common::{run, run_model, s, Run};
use hvae::{Posterior, Shape};
use hvae_host::data;
use hvae_host::plot::{cluster_colour, parse_report, principal_axes};
use hvae_host::synth::VmfMixture;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Decodes a PNG: width, height and a histogram of its RGB colours.
fn decode(path: &Path) -> (u32, u32, HashMap<[u8; 3], usize>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let mut hist = HashMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(3) {
        *hist.entry([px[0], px[1], px[2]]).or_insert(0) += 1;
    }
    (info.width, info.height, hist)
}

/// Data with `d` features in 4 clusters, and a model with latent `m` for it.
fn fixture(dir: &Path, m: usize) -> (PathBuf, PathBuf) {
    let mix = VmfMixture::new(8, 4, 300, 30.0, 3).generate().unwrap();
    let data_path = dir.join("mix.csv");
    data::write_csv(&data_path, &mix.data).unwrap();
    let shape = Shape::new(8, &[6], m, 4).with_posterior(Posterior::PowerSpherical);
    let model = common::write_model(dir, &format!("m{m}.hvae"), &common::model(shape, 4));
    (data_path, model)
}

/// Asserts the picture is `w x h`, far from blank, and shows every centre's colour.
fn assert_latent_picture(path: &Path, w: u32, h: u32, clusters: usize) {
    let (pw, ph, hist) = decode(path);
    assert_eq!((pw, ph), (w, h));
    let total = (w * h) as usize;
    let white = hist.get(&[255, 255, 255]).copied().unwrap_or(0);
    // The disks' light fill, the dots and the text cover far more than 5% of the canvas.
    assert!(
        white < total * 95 / 100,
        "almost blank: {white} of {total} white"
    );
    assert!(hist.len() > 50, "only {} colours", hist.len());
    for k in 0..clusters {
        let c = cluster_colour(k);
        let n = hist.get(&[c.0, c.1, c.2]).copied().unwrap_or(0);
        // A centre is a filled disk of radius >= 7 px in its cluster's exact colour.
        assert!(n >= 50, "cluster {k}'s colour has {n} pixels");
    }
}

#[test]
fn latent_pictures_for_m_2_3_and_8() {
    let dir = tempfile::tempdir().unwrap();
    for (m, w, h) in [(3usize, 900u32, 600u32), (2, 640, 480), (8, 700, 720)] {
        let (data_path, model) = fixture(dir.path(), m);
        let out = dir.path().join(format!("latent{m}.png"));
        let (ws, hs) = (w.to_string(), h.to_string());
        let r = run_model(
            "plot",
            &model,
            &[
                "--data",
                s(&data_path),
                "--out",
                s(&out),
                "--width",
                &ws,
                "--height",
                &hs,
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains(&format!("{w}x{h} PNG") as &str),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("300 latent directions"), "{}", r.stdout);
        assert_latent_picture(&out, w, h, 4);
    }
}

/// The model `--gmm-candidate` did not keep (`other_epochs`): its ACC and NMI beside the
/// kept model's, at its own epochs; an entry at an epoch the curves lack is refused.
#[test]
fn the_model_not_kept_is_scored_beside_the_kept_one() {
    let epoch = |e: u32, warm: bool, acc: f64| {
        format!(
            r#"{{"epoch":{e},"warmup":{warm},"loss":{{"total":1.0}},"acc":{acc},"nmi":{}}}"#,
            acc / 2.0
        )
    };
    let kept: Vec<String> = (1..=4)
        .map(|e| epoch(e, e <= 2, 0.25 * f64::from(e)))
        .collect();
    let report = |other: &[String]| {
        format!(
            r#"{{"epochs":[{}],"other_epochs":[{}]}}"#,
            kept.join(","),
            other.join(",")
        )
    };
    let c = parse_report(report(&[epoch(3, false, 0.3)]).as_bytes()).unwrap();
    let names: Vec<&str> = c.scores.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ACC", "NMI", "ACC, not kept", "NMI, not kept"]);
    assert_eq!(
        c.scores[0].1,
        [Some(0.25), Some(0.5), Some(0.75), Some(1.0)]
    );
    assert_eq!(c.scores[2].1, [None, None, Some(0.3), None]);
    assert_eq!(c.scores[3].1, [None, None, Some(0.15), None]);
    // No other model: the kept model's two series alone.
    assert_eq!(
        parse_report(report(&[]).as_bytes()).unwrap().scores.len(),
        2
    );
    let e = parse_report(report(&[epoch(7, false, 0.3)]).as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .contains("other_epochs entry 1 has no epoch of the curves"),
        "{e}"
    );
    let bad = epoch(3, false, 0.3).replace("0.3", "\"high\"");
    let e = parse_report(report(&[bad]).as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .contains("other_epochs entry 1: \"acc\" is not a number"),
        "{e}"
    );
}

#[test]
fn curves_from_a_training_report_and_the_default_size() {
    let dir = tempfile::tempdir().unwrap();
    let (data_path, _) = fixture(dir.path(), 3);
    let model = dir.path().join("trained.hvae");
    let report = dir.path().join("report.json");
    let r = run(&[
        "train",
        "--data",
        s(&data_path),
        "--clusters",
        "4",
        "--latent",
        "3",
        "--epochs",
        "12",
        "--warmup",
        "4",
        "--out",
        s(&model),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let curves = dir.path().join("curves.png");
    let r = run(&["plot", "--curves", s(&report), "--out", s(&curves)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("12 epochs of curves"), "{}", r.stdout);
    let (w, h, hist) = decode(&curves);
    assert_eq!((w, h), (1000, 800));
    // Series 0 and 1 of each panel are drawn 2 px wide in the first two palette colours
    // (the mixture is labelled, so the ACC/NMI panel is there too).
    for j in 0..2 {
        let c = cluster_colour(j);
        let n = hist.get(&[c.0, c.1, c.2]).copied().unwrap_or(0);
        assert!(n >= 200, "series colour {j}: {n} pixels");
    }
    // The shaded warm-up band.
    assert!(hist.get(&[235, 235, 235]).copied().unwrap_or(0) > 1000);

    let both = dir.path().join("both.png");
    let r = run_model(
        "plot",
        &model,
        &[
            "--data",
            s(&data_path),
            "--curves",
            s(&report),
            "--out",
            s(&both),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_latent_picture(&both, 1800, 800, 4);
}

#[test]
fn principal_axes_find_the_plane_of_the_data() {
    // Points on the great circle of the (e2, e4) plane of R^5, plus a little e1.
    let mut x = Vec::new();
    for i in 0..200 {
        let t = i as f32 * 0.1;
        x.extend_from_slice(&[0.01 * (i % 3) as f32, t.cos(), 0.0, t.sin(), 0.0]);
    }
    let ([a1, a2], share) = principal_axes(&x, 5);
    for a in [&a1, &a2] {
        let norm: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-9);
        // All weight on e2 and e4.
        assert!(a[1] * a[1] + a[3] * a[3] > 0.999, "{a:?}");
    }
    let dot: f64 = a1.iter().zip(&a2).map(|(p, q)| p * q).sum();
    assert!(dot.abs() < 1e-6, "axes not orthogonal: {dot}");
    assert!(share[0] + share[1] > 0.999, "{share:?}");
}

/// Asserts exit status 2, one line containing `needle`, and no output file.
fn assert_rejected(r: &Run, out: &Path, needle: &str) {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.contains(needle), "{:?} lacks {needle:?}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!out.exists(), "a file was left behind");
}

#[test]
fn bad_input_is_rejected_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (data_path, model) = fixture(dir.path(), 3);
    let out = dir.path().join("out.png");
    let o = s(&out).to_string();
    let garbage = dir.path().join("garbage.hvae");
    std::fs::write(&garbage, b"not a model").unwrap();
    let wide = dir.path().join("wide.csv");
    std::fs::write(&wide, "a,b,c\n1,2,3\n").unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{\"epochs\": [").unwrap();
    let no_epochs = dir.path().join("no_epochs.json");
    std::fs::write(&no_epochs, "{\"epochs\": []}").unwrap();
    let bad_acc = dir.path().join("bad_acc.json");
    std::fs::write(
        &bad_acc,
        r#"{"epochs":[{"epoch":1,"warmup":false,"loss":{"total":1.0},"acc":"high"}]}"#,
    )
    .unwrap();
    let none = dir.path().join("none.csv");
    let (m, d) = (s(&model), s(&data_path));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", s(&garbage), "--data", d], "garbage.hvae"),
        (vec!["--model", m, "--data", s(&none)], "none.csv"),
        (
            vec!["--model", m, "--data", s(&wide)],
            "expects 8 input features",
        ),
        (
            vec!["--curves", s(&bad_json)],
            "not a `hvae train --report` file",
        ),
        (vec!["--curves", s(&no_epochs)], "\"epochs\" array is empty"),
        (vec!["--curves", s(&bad_acc)], "\"acc\" is not a number"),
        (vec!["--model", m, "--data", d, "--width", "10"], "--width"),
        (vec!["--model", m], "--data"),
        (vec![], "--model"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["plot", "--out", &o];
        full.extend(args);
        let r = run(&full);
        assert_rejected(&r, &out, needle);
        if !needle.starts_with("--") {
            // The tool's own errors (not clap's usage text) are one line.
            assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
        }
    }
}
