//! Online k-means of the centres (`hvae::train::centres`): the rule against values
//! computed by hand, a trained centre that moves by `1 / memory`, an empty one that jumps
//! onto its first sample, refusals that change nothing, and the engine applying the rule
//! to each sample's label.

use hvae::train::centres::{
    in_use, CentreCounts, CentreError, SpawnRule, Spawner, Tidied, TidyRule, MAX_NOVELTY,
    UNUSED_LOG_WEIGHT,
};
use hvae::Shape;

const S: Shape = Shape::new(4, &[6], 2, 3);

/// Centres (1, 0), (0, 1), (-1, 0); `ln kappa_s` 2; log-weights 0.
fn segmenter() -> Vec<f32> {
    vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0]
}

#[test]
fn a_trained_centre_moves_by_one_over_memory_and_stays_unit() {
    let mut seg = segmenter();
    let mut c = CentreCounts::new(4.0);
    // Centre 0 towards (0, 1): (1, 0) + ((0, 1) - (1, 0)) / 4 = (0.75, 0.25), normalised.
    c.update(&S, &mut seg, &[0.0, 1.0], 0).unwrap();
    let n = (0.75f32 * 0.75 + 0.25 * 0.25).sqrt();
    assert!((seg[0] - 0.75 / n).abs() <= 1e-6, "{seg:?}");
    assert!((seg[1] - 0.25 / n).abs() <= 1e-6, "{seg:?}");
    assert!(((seg[0] * seg[0] + seg[1] * seg[1]) - 1.0).abs() <= 1e-6);
    // Nothing else moved; the count stays at the memory.
    assert_eq!(&seg[2..], &segmenter()[2..]);
    assert_eq!(c.count(0), 4.0);
    assert_eq!(c.updates(), 1);
    // A hundred samples at (0, 1): the centre converges there.
    for _ in 0..100 {
        c.update(&S, &mut seg, &[0.0, 1.0], 0).unwrap();
    }
    assert!(
        seg[0].abs() < 1e-6 && (seg[1] - 1.0).abs() < 1e-6,
        "{seg:?}"
    );
}

#[test]
fn an_empty_centre_jumps_onto_its_first_sample_then_averages() {
    let mut seg = segmenter();
    let mut c = CentreCounts::new(0.0);
    // A memory below 1 is 1: every sample replaces the centre.
    c.update(&S, &mut seg, &[0.6, 0.8], 2).unwrap();
    assert_eq!(&seg[4..6], &[0.6, 0.8]);
    let mut c = CentreCounts::new(10.0);
    // Count 10 -> min(11, 10) = 10: step 1/10.
    c.update(&S, &mut seg, &[0.0, -1.0], 1).unwrap();
    let (x, y) = (0.0f32, 1.0f32 + (-1.0 - 1.0) / 10.0);
    assert!((seg[2] - x).abs() <= 1e-7 && (seg[3] - y / y.abs()).abs() <= 1e-6);
}

#[test]
fn bad_input_changes_nothing() {
    let mut seg = segmenter();
    let mut c = CentreCounts::new(4.0);
    let before = c.clone();
    assert_eq!(
        c.update(&S, &mut seg, &[0.0, 1.0], 3),
        Err(CentreError::Length)
    );
    assert_eq!(c.update(&S, &mut seg, &[0.0], 0), Err(CentreError::Length));
    assert_eq!(
        c.update(&S, &mut seg[..9], &[0.0, 1.0], 0),
        Err(CentreError::Length)
    );
    assert_eq!(
        c.update(&S, &mut seg, &[f32::NAN, 1.0], 0),
        Err(CentreError::NonFinite)
    );
    // The exact opposite of a centre with memory 2: the midpoint is zero.
    let mut c2 = CentreCounts::new(2.0);
    assert_eq!(
        c2.update(&S, &mut seg, &[-1.0, 0.0], 0),
        Err(CentreError::NonFinite)
    );
    assert_eq!(seg, segmenter());
    assert_eq!(c, before);
    assert_eq!(c2.updates(), 0);
}

/// The spawner: novelty that persists (count of the window) spawns the larger group's
/// mean direction into the first unused slot, with the used slots' mean log-weight;
/// scattered novelty does not; a full segmenter spawns nothing.
#[test]
fn persistent_novelty_spawns_a_centre_into_an_unused_slot() {
    use hvae::train::centres::{in_use, SpawnRule, Spawner, UNUSED_LOG_WEIGHT};
    use rand_core::SeedableRng;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
    // Slot 2 unused: a copy of centre 0, log-weight UNUSED.
    let mut seg = vec![
        1.0,
        0.0,
        0.0,
        1.0,
        1.0,
        0.0,
        2.0,
        -1.0,
        -2.0,
        UNUSED_LOG_WEIGHT,
    ];
    assert!(in_use(&S, &seg, 0) && in_use(&S, &seg, 1) && !in_use(&S, &seg, 2));
    let rule = SpawnRule {
        threshold: 0.5,
        window: 8,
        count: 4,
    };
    let mut sp = Spawner::new(rule);
    // Scattered novelty: one novel sample in every 3 never fills 4 of a window of 8.
    for i in 0..30 {
        let novel = i % 3 == 0;
        assert!(
            !sp.observe(&[0.0, 1.0], if novel { 0.9 } else { 0.1 }),
            "{i}"
        );
    }
    // Persistent novelty near (-0.6, -0.8), with two strays near (0.6, -0.8).
    let mut sp = Spawner::new(rule);
    let dirs = [[-0.6f32, -0.8], [-0.62, -0.78], [0.6, -0.8], [-0.58, -0.81]];
    let mut fired = false;
    for d in dirs.iter().chain(&[[0.61f32, -0.79], [-0.6, -0.8]]) {
        let n = (d[0] * d[0] + d[1] * d[1]).sqrt();
        fired = sp.observe(&[d[0] / n, d[1] / n], 0.9);
    }
    assert!(fired);
    let mut counts = CentreCounts::new(50.0);
    let slot = sp.spawn(&S, &mut seg, &mut counts, &mut rng).unwrap();
    assert_eq!(slot, Some(2));
    assert!(in_use(&S, &seg, 2));
    // The larger group's mean direction: near (-0.6, -0.8).
    assert!(
        (seg[4] + 0.6).abs() < 0.02 && (seg[5] + 0.8).abs() < 0.02,
        "{seg:?}"
    );
    assert_eq!(seg[9], -1.5);
    assert_eq!(counts.count(2), 4.0);
    assert_eq!(sp.spawned(), 1);
    // Its memory of novelty starts again; with no unused slot left, nothing spawns.
    assert!(!sp.observe(&[0.0, -1.0], 0.9));
    for _ in 0..8 {
        sp.observe(&[0.0, -1.0], 0.9);
    }
    let before = seg.clone();
    assert_eq!(sp.spawn(&S, &mut seg, &mut counts, &mut rng), Ok(None));
    assert_eq!(seg, before);
}

/// `tidy` never retires or merges: the rule's "never" values.
const NEVER: TidyRule = TidyRule {
    merge_above: 2.0,
    starve_after: u32::MAX,
};

#[test]
fn coinciding_centres_merge_into_the_one_with_the_larger_count() {
    let rule = TidyRule {
        merge_above: 0.98,
        ..NEVER
    };
    let (x, y) = (0.99f32, (1.0f32 - 0.99 * 0.99).sqrt());
    // Equal counts: the lower slot stays. Centre 1 sits at cosine 0.99 to centre 0.
    let mut seg = segmenter();
    seg[2..4].copy_from_slice(&[x, y]);
    let mut c = CentreCounts::new(4.0);
    c.update(&S, &mut seg, &[x, y], 1).unwrap();
    let moved = seg.clone();
    let t = c.tidy(&S, &mut seg, 1, &rule).unwrap();
    assert_eq!(t, Some(Tidied::Merged { from: 1, into: 0 }));
    // (4 c0 + 4 c1) / |...|, by hand.
    let (sx, sy) = (
        4.0 * moved[0] + 4.0 * moved[2],
        4.0 * moved[1] + 4.0 * moved[3],
    );
    let n = (sx * sx + sy * sy).sqrt();
    assert!((seg[0] - sx / n).abs() <= 1e-6 && (seg[1] - sy / n).abs() <= 1e-6);
    // Slot 1 is unused: the kept centre's direction, the unused log-weight, count 0.
    assert_eq!(&seg[2..4], &seg[0..2]);
    assert!(!in_use(&S, &seg, 1) && in_use(&S, &seg, 0) && in_use(&S, &seg, 2));
    assert_eq!(seg[7 + 1], UNUSED_LOG_WEIGHT);
    assert_eq!((c.count(0), c.count(1)), (4.0, 0.0));
    // Centre 2, far from every other, merges with nothing.
    assert_eq!(c.tidy(&S, &mut seg, 2, &rule), Ok(None));

    // The larger count stays, and takes the sum of the counts up to the memory.
    let mut seg = segmenter();
    seg[2..4].copy_from_slice(&[x, y]);
    let mut c = CentreCounts::new(4.0);
    c.set_count(0, 1.0);
    c.set_count(1, 2.0);
    let t = c.tidy(&S, &mut seg, 1, &rule).unwrap();
    assert_eq!(t, Some(Tidied::Merged { from: 0, into: 1 }));
    let (sx, sy) = (1.0 + 2.0 * x, 2.0 * y);
    let n = (sx * sx + sy * sy).sqrt();
    assert!((seg[2] - sx / n).abs() <= 1e-6 && (seg[3] - sy / n).abs() <= 1e-6);
    assert_eq!(&seg[0..2], &seg[2..4]);
    assert!(!in_use(&S, &seg, 0));
    assert_eq!((c.count(0), c.count(1)), (0.0, 3.0));
}

#[test]
fn a_starving_centre_retires_but_never_the_last_one() {
    let rule = TidyRule {
        starve_after: 5,
        ..NEVER
    };
    let mut seg = segmenter();
    let mut c = CentreCounts::new(4.0);
    let mut events = Vec::new();
    for i in 0..10 {
        c.update(&S, &mut seg, &[1.0, 0.0], 0).unwrap();
        if let Some(t) = c.tidy(&S, &mut seg, 0, &rule).unwrap() {
            events.push((i + 1, t));
        }
    }
    // After 6 samples centres 1 and 2 went 6 > 5 without one: the first retires, the
    // other after the next sample; centre 0, the last in use, stays.
    assert_eq!(
        events,
        vec![
            (6, Tidied::Retired { slot: 1 }),
            (7, Tidied::Retired { slot: 2 })
        ]
    );
    assert!(in_use(&S, &seg, 0) && !in_use(&S, &seg, 1) && !in_use(&S, &seg, 2));
    // Retired slots hold a centre in use's direction (the novelty is that of centre 0).
    assert_eq!(&seg[2..4], &seg[0..2]);
    assert_eq!(&seg[4..6], &seg[0..2]);
    // A centre that takes samples does not starve: with centres 0 and 1 fed in turn,
    // nothing retires.
    let mut seg = segmenter();
    seg[7 + 2] = UNUSED_LOG_WEIGHT;
    let mut c = CentreCounts::new(4.0);
    for i in 0..50 {
        let (mu, k) = if i % 2 == 0 {
            ([1.0, 0.0], 0)
        } else {
            ([0.0, 1.0], 1)
        };
        c.update(&S, &mut seg, &mu, k).unwrap();
        assert_eq!(c.tidy(&S, &mut seg, k, &rule), Ok(None));
    }
}

#[test]
fn tidy_refuses_a_segmenter_of_another_shape_and_changes_nothing() {
    let mut seg = segmenter();
    let mut c = CentreCounts::new(4.0);
    let before = c.clone();
    let rule = TidyRule {
        merge_above: -2.0,
        starve_after: 0,
    };
    assert_eq!(
        c.tidy(&S, &mut seg[..9], 0, &rule),
        Err(CentreError::Length)
    );
    assert_eq!(c.tidy(&S, &mut seg, 3, &rule), Err(CentreError::Length));
    assert_eq!((seg, c), (segmenter(), before));
}

/// A threshold at or above `MAX_NOVELTY` turns spawning off: no novelty is novel, not
/// even one rounded above 2, and a stream of them never fires the rule; below it, the
/// comparison is strict.
#[test]
fn max_novelty_turns_spawning_off() {
    let rule = |threshold| SpawnRule {
        threshold,
        window: 4,
        count: 1,
    };
    let above = f32::from_bits(MAX_NOVELTY.to_bits() + 2);
    for t in [MAX_NOVELTY, above, f32::INFINITY] {
        let mut sp = Spawner::new(rule(t));
        for n in [MAX_NOVELTY, above, f32::MAX, f32::INFINITY] {
            assert!(!sp.is_novel(n), "threshold {t}, novelty {n}");
            assert!(!sp.observe(&[0.0, -1.0], n), "threshold {t}, novelty {n}");
        }
    }
    let sp = Spawner::new(rule(1.5));
    assert!(sp.is_novel(above) && sp.is_novel(1.6) && !sp.is_novel(1.5));
    let just_below = f32::from_bits(MAX_NOVELTY.to_bits() - 1);
    assert!(Spawner::new(rule(just_below)).is_novel(above));
}
