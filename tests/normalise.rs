//! The input normalisation rule (`hvae::infer::normalise`) against values computed
//! independently with NumPy (`m = x.mean(0); s = max(x.std(0), |x - m|.max(0) / 10)`,
//! scale `1 / s`, or 1 where `s <= 1e-6`), its errors, and the device trainer using the
//! same rule as the host.

use hvae::infer::normalise::{fit, NormaliseError};

/// Columns: ordinary values, a column in large units, a sparse column (one excursion),
/// a constant column.
const X: [[f64; 4]; 6] = [
    [1.0, 1200.0, 0.0, 3.0],
    [2.0, 900.0, 0.0, 3.0],
    [0.5, 1500.0, 0.0, 3.0],
    [1.5, 1100.0, 0.0, 3.0],
    [3.0, 1000.0, 0.0, 3.0],
    [2.5, 1300.0, 5.0, 3.0],
];

#[test]
fn matches_numpy_on_each_kind_of_feature() {
    let rows: Vec<&[f64]> = X.iter().map(|r| &r[..]).collect();
    let (mut offset, mut scale) = ([0.0; 4], [0.0; 4]);
    fit(rows.iter().copied(), &mut offset, &mut scale).unwrap();
    let want_offset = [
        1.75,
        1.166_666_666_666_666_7e3,
        8.333_333_333_333_333e-1,
        3.0,
    ];
    // Ordinary and large units: 1/sd each (no floor shared across columns). Sparse:
    // sd 1.8634 is above the excursion over ten (0.4167), so 1/sd. Constant: 1.
    let want_scale = [
        1.171_080_087_538_24,
        0.005_070_925_528_371_099,
        0.536_656_314_599_949_4,
        1.0,
    ];
    for j in 0..4 {
        assert!((offset[j] - want_offset[j]).abs() <= 1e-12 * want_offset[j].abs().max(1.0));
        assert!(
            (scale[j] - want_scale[j]).abs() <= 1e-12 * want_scale[j],
            "feature {j}: {} vs {}",
            scale[j],
            want_scale[j]
        );
    }
}

#[test]
fn a_rare_excursion_is_capped_at_ten_spreads() {
    // 99 zeros and one 1: sd 0.0995, excursion 0.99; without the cap the 1 would sit at
    // 9.95 deviations, with it at 10 spreads at most.
    let mut rows = vec![[0.0f32]; 99];
    rows.push([1.0]);
    let (mut o, mut s) = ([0.0f32], [0.0f32]);
    fit(rows.iter().map(|r| &r[..]), &mut o, &mut s).unwrap();
    let z = (1.0 - o[0]) * s[0];
    assert!(z <= 10.0 + 1e-4, "{z}");
    // 9 zeros and one 1: the sd (0.3) is above the excursion over 10 (0.09): plain
    // standardisation.
    let mut rows = vec![[0.0f32]; 9];
    rows.push([1.0]);
    fit(rows.iter().map(|r| &r[..]), &mut o, &mut s).unwrap();
    assert!((s[0] - 1.0 / 0.3).abs() < 1e-5, "{}", s[0]);
}

#[test]
fn bad_input_is_an_error() {
    let (mut o, mut s) = ([0.0f32; 2], [0.0f32; 2]);
    let none: [&[f32]; 0] = [];
    assert_eq!(fit(none, &mut o, &mut s), Err(NormaliseError::NoRows));
    let short: [&[f32]; 1] = [&[1.0]];
    assert_eq!(fit(short, &mut o, &mut s), Err(NormaliseError::Length));
    let nan: [&[f32]; 2] = [&[1.0, f32::NAN], &[2.0, 1.0]];
    assert_eq!(fit(nan, &mut o, &mut s), Err(NormaliseError::NonFinite));
    let inf: [&[f32]; 2] = [&[1.0, f32::INFINITY], &[2.0, 1.0]];
    assert_eq!(fit(inf, &mut o, &mut s), Err(NormaliseError::NonFinite));
    let (mut o3, mut s2) = ([0.0f32; 3], [0.0f32; 2]);
    let ok: [&[f32]; 1] = [&[1.0, 2.0, 3.0]];
    assert_eq!(fit(ok, &mut o3, &mut s2), Err(NormaliseError::Length));
}

/// The device's trainer fits its buffer with the same rule, to the same bits.
#[test]
fn the_online_trainer_uses_the_same_rule() {
    use hvae::shape::{Scope, Shape};
    use hvae::train::trainer::{OnlineTrainer, TrainConfig};
    use hvae::Model;
    const D: usize = 4;
    const CAP: usize = 8;
    let shape = Shape::new(D, &[8], 3, 2);
    let cfg = TrainConfig::new(1e-3f32);
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&shape, Scope::Full, cfg.batch, CAP)];
    let state =
        vec![0.0; TrainConfig::<f32>::optim_len(&shape, Scope::Full, cfg.optim.optimiser.kind())];
    let mut t: OnlineTrainer<f32, D, CAP, Vec<f32>, Vec<f32>> =
        OnlineTrainer::new(&shape, cfg, scratch, state).unwrap();
    let rows: Vec<[f32; D]> = X.iter().map(|r| r.map(|v| v as f32)).collect();
    for r in &rows {
        t.push(r).unwrap();
    }
    let mut model = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    t.fit_normalisation(&mut model).unwrap();
    let (mut o, mut s) = ([0.0f32; D], [0.0f32; D]);
    fit(rows.iter().map(|r| &r[..]), &mut o, &mut s).unwrap();
    let at = shape.norm_offset();
    let p = model.params();
    assert_eq!(&p[at..at + D], &o[..]);
    assert_eq!(&p[at + D..at + 2 * D], &s[..]);
}

/// A seeded stream of `n` rows of 4 Gaussian features, each with its own mean and
/// deviation (in different units), passed through `gain` and `offset` per feature.
fn stream(n: usize, seed: u64, gain: [f32; 4], offset: [f32; 4]) -> Vec<[f32; 4]> {
    use rand_core::SeedableRng;
    const MEAN: [f32; 4] = [0.0, 100.0, -3.0, 0.5];
    const SD: [f32; 4] = [1.0, 20.0, 0.1, 2.0];
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            core::array::from_fn(|f| {
                let z: f32 = hvae::dist::rng::standard_normal(&mut rng);
                gain[f] * (MEAN[f] + SD[f] * z) + offset[f]
            })
        })
        .collect()
}

/// Mean and deviation of each feature of `rows` after `(x - offset) * scale`.
fn normalised_moments(rows: &[[f32; 4]], offset: &[f32; 4], scale: &[f32; 4]) -> [(f64, f64); 4] {
    core::array::from_fn(|f| {
        let v: Vec<f64> = rows
            .iter()
            .map(|r| f64::from((r[f] - offset[f]) * scale[f]))
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt();
        (m, sd)
    })
}

#[test]
fn a_tracker_that_never_forgets_matches_the_batch_rule() {
    use hvae::infer::normalise::Tracker;
    let rows = stream(5000, 1, [1.0; 4], [0.0; 4]);
    let mut t = Tracker::<4>::new(1.0);
    for r in &rows {
        t.push(r).unwrap();
    }
    assert_eq!(t.rows(), 5000);
    let (mut o, mut s) = ([0.0f32; 4], [0.0f32; 4]);
    t.normalisation(&mut o, &mut s).unwrap();
    let (mut fo, mut fs) = ([0.0f32; 4], [0.0f32; 4]);
    fit(rows.iter().map(|r| &r[..]), &mut fo, &mut fs).unwrap();
    for f in 0..4 {
        // Gaussian features: the deviation is the spread (the largest excursion, about
        // 4 deviations, stays under 10). The running sums differ from the batch's
        // only by f32 rounding: a hundred-thousandth of a deviation.
        let sd = 1.0 / fs[f];
        assert!(
            (o[f] - fo[f]).abs() <= 1e-4 * sd,
            "offset {f}: {o:?} vs {fo:?}"
        );
        assert!(
            (s[f] / fs[f] - 1.0).abs() <= 1e-4,
            "scale {f}: {s:?} vs {fs:?}"
        );
    }
}

#[test]
fn a_tracker_follows_a_sudden_drift_and_the_frozen_rule_does_not() {
    use hvae::infer::normalise::Tracker;
    // Time constant 200 rows: about 400 rows' worth of statistics, so the normalised
    // mean has a standard error of about 0.05 and the deviation about 0.035.
    let mut t = Tracker::<4>::new(0.995);
    for r in &stream(3000, 2, [1.0; 4], [0.0; 4]) {
        t.push(r).unwrap();
    }
    let (mut o0, mut s0) = ([0.0f32; 4], [0.0f32; 4]);
    t.normalisation(&mut o0, &mut s0).unwrap();
    // The sensor changes: gains in [0.7, 1.3], offsets of up to half a deviation.
    let gain = [0.7, 1.3, 1.2, 0.8];
    let offset = [0.5, -10.0, 0.05, -1.0];
    for r in &stream(2000, 3, gain, offset) {
        t.push(r).unwrap();
    }
    let (mut o, mut s) = ([0.0f32; 4], [0.0f32; 4]);
    t.normalisation(&mut o, &mut s).unwrap();
    let fresh = stream(20_000, 4, gain, offset);
    for (f, (m, sd)) in normalised_moments(&fresh, &o, &s).into_iter().enumerate() {
        assert!(
            m.abs() <= 0.2,
            "feature {f}: normalised mean {m} (4 standard errors)"
        );
        assert!(
            (sd - 1.0).abs() <= 0.15,
            "feature {f}: normalised deviation {sd}"
        );
    }
    // The normalisation from before the change is off by far more on every feature.
    for (f, (m, sd)) in normalised_moments(&fresh, &o0, &s0).into_iter().enumerate() {
        assert!(
            m.abs() >= 0.25 || (sd - 1.0).abs() >= 0.19,
            "feature {f}: {m} {sd}"
        );
    }
}

#[test]
fn a_tracker_refuses_bad_rows_and_changes_nothing() {
    use hvae::infer::normalise::Tracker;
    let mut t = Tracker::<2>::new(0.9);
    let (mut o, mut s) = ([7.0f32; 2], [7.0f32; 2]);
    assert_eq!(t.normalisation(&mut o, &mut s), Err(NormaliseError::NoRows));
    t.push(&[1.0, 2.0]).unwrap();
    t.push(&[3.0, 5.0]).unwrap();
    let before = t.clone();
    assert_eq!(t.push(&[f32::NAN, 1.0]), Err(NormaliseError::NonFinite));
    assert_eq!(
        t.push(&[1.0, f32::INFINITY]),
        Err(NormaliseError::NonFinite)
    );
    assert_eq!(t.push(&[1.0]), Err(NormaliseError::Length));
    assert_eq!(t, before);
    assert_eq!(
        t.normalisation(&mut o[..1], &mut s),
        Err(NormaliseError::Length)
    );
    assert_eq!((o, s), ([7.0; 2], [7.0; 2]));
    t.normalisation(&mut o, &mut s).unwrap();
    // Two rows, averaged exactly: mean (2, 3.5), deviations 1 and 1.5.
    assert_eq!(o, [2.0, 3.5]);
    assert!(
        (s[0] - 1.0).abs() < 1e-6 && (s[1] - 1.0 / 1.5).abs() < 1e-6,
        "{s:?}"
    );
}

#[test]
fn a_tracker_started_from_a_normalisation_gives_it_back_and_moves_by_one_minus_decay() {
    use hvae::infer::normalise::Tracker;
    let (offset, scale) = ([2.0f32, -1.0, 0.0], [0.5f32, 4.0, 1.0]);
    let t = Tracker::<3>::from_normalisation(&offset, &scale, 0.99).unwrap();
    // A window of rows: 1 / (1 - 0.99) = 100 (rounded up from f32's 100.000...).
    assert!((100..=101).contains(&t.rows()), "{}", t.rows());
    let (mut o, mut s) = ([0.0f32; 3], [0.0f32; 3]);
    t.normalisation(&mut o, &mut s).unwrap();
    assert_eq!(o, offset);
    for f in 0..3 {
        assert!((s[f] / scale[f] - 1.0).abs() <= 1e-6, "{s:?}");
    }
    // One row moves the mean by (1 - decay) of its distance, not by 1 / n.
    let mut t = t;
    t.push(&[12.0, -1.0, 0.0]).unwrap();
    t.normalisation(&mut o, &mut s).unwrap();
    let a = 1.0 - 0.99f32;
    assert!((o[0] - (2.0 + a * 10.0)).abs() <= 1e-5, "{o:?}");
    assert_eq!(o[1], -1.0);
    // Bad input: lengths, non-finite or non-positive scales.
    assert_eq!(
        Tracker::<3>::from_normalisation(&offset[..2], &scale, 0.99),
        Err(NormaliseError::Length)
    );
    assert_eq!(
        Tracker::<3>::from_normalisation(&offset, &[1.0, 0.0, 1.0], 0.99),
        Err(NormaliseError::NonFinite)
    );
    assert_eq!(
        Tracker::<3>::from_normalisation(&[f32::NAN, 0.0, 0.0], &scale, 0.99),
        Err(NormaliseError::NonFinite)
    );
}
