//! The micro:bit v2 example (`boards/microbit-v2`) on the host: its `no_std` feature code
//! must compute what `model/make_model.py` trained the compiled-in model on, and that
//! model must then tell the four synthetic activities apart. The board itself is only
//! built in CI, so this is where its pipeline (window -> features -> model) is checked.
//!
//! Python (for the synthetic windows): `$HVAE_PYTHON`, else `reference/.venv/bin/python`;
//! without either the test fails under CI (`CI` set) and is skipped with a note otherwise.

mod common;

use common::{output_ok, reference_python};
use hvae_accel_features::{features, FEATURES, WINDOW};
use std::path::{Path, PathBuf};

fn board_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/microbit-v2")
}

/// Per line from Python: activity, the window's `WINDOW x 3` samples, its 12 features.
const SCRIPT: &str = r#"
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import make_model as mm
rng = np.random.default_rng(123)
for i in range(80):
    a = mm.window(rng, i % 4)
    f = mm.features(a)
    print(i % 4, " ".join(repr(float(v)) for v in a.ravel()), " ".join(repr(float(v)) for v in f))
"#;

#[test]
fn rust_features_match_the_training_features_and_the_model_separates_activities() {
    let Some(py) = reference_python("make_model.py") else {
        return;
    };
    let out = output_ok(
        std::process::Command::new(py)
            .arg("-c")
            .arg(SCRIPT)
            .arg(board_dir().join("model")),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let model = hvae_host::model_io::load(&board_dir().join("model/acc.hvae"))
        .unwrap()
        .model;
    assert_eq!(model.shape().input, FEATURES);
    let mut work = vec![0.0f32; model.shape().work_len()];
    // cluster_of[activity] = the cluster its first window got.
    let mut cluster_of = [usize::MAX; 4];
    let mut worst = 0.0f64;
    let mut rows = 0;
    for line in text.lines() {
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 1 + 3 * WINDOW + FEATURES);
        let activity = v[0] as usize;
        let mut w = [[0.0f32; 3]; WINDOW];
        for (i, s) in w.iter_mut().enumerate() {
            for (a, x) in s.iter_mut().enumerate() {
                *x = v[1 + 3 * i + a] as f32;
            }
        }
        let got = features(&w);
        let want = &v[1 + 3 * WINDOW..];
        for (g, e) in got.iter().zip(want) {
            // f32 on the device against f64 in NumPy.
            worst = worst.max((f64::from(*g) - e).abs() / e.abs().max(1.0));
        }
        let seg = model.segment(&got, &mut work).unwrap();
        if cluster_of[activity] == usize::MAX {
            cluster_of[activity] = seg.label;
        }
        assert_eq!(
            seg.label, cluster_of[activity],
            "activity {activity}: window {rows} went to another cluster"
        );
        rows += 1;
    }
    assert_eq!(rows, 80);
    eprintln!("worst feature difference (relative to max(1, |value|)): {worst:.2e}");
    assert!(worst < 1e-5, "features differ by {worst}");
    let mut distinct = cluster_of.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "activities share clusters: {cluster_of:?}"
    );
    // The names the firmware prints for each cluster (boards/microbit-v2/src/main.rs):
    // shaking, held upright, resting flat, walking; activities are 0 resting flat,
    // 1 held upright, 2 walking, 3 shaking.
    assert_eq!(cluster_of, [2, 1, 3, 0]);
}
