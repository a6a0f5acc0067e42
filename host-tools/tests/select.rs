//! Label-free model selection and the suite's statistics against independent values:
//! the silhouette against scikit-learn's `silhouette_score(metric="cosine")`, Spearman's
//! rho against SciPy's `spearmanr`, neighbour agreement, normalised association and the
//! two-view neighbours by hand, the suite's summary of the restart criteria, its
//! regression check and the standings on its bars.

use hvae_host::select::{
    agreement, euclidean_neighbours, neighbour_agreement, normalised_association, restart_seed,
    silhouette,
};
use hvae_host::select::{Criteria, Criterion};
use hvae_host::suite::{
    criteria_summary, regressions, spearman, standings_lost, Best, RestartScore, Run, SetResult,
    Stat,
};
use hvae_host::train::mine_neighbours_both;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::BTreeMap;

/// Twelve unit vectors in 3-D (NumPy `default_rng(3)`, normalised, as f32; written with
/// the digits NumPy printed).
#[allow(clippy::excessive_precision)]
const MUS: [[f32; 3]; 12] = [
    [0.618984043598175, -0.7750996947288513, 0.1268039047718048],
    [
        -0.7495768070220947,
        -0.5975934863090515,
        -0.28463417291641235,
    ],
    [
        -0.9141490459442139,
        -0.10496149957180023,
        -0.3915540277957916,
    ],
    [0.9921544194221497, 0.06741354614496231, -0.1052856594324112],
    [
        -0.21973223984241486,
        -0.5218552947044373,
        -0.8242480158805847,
    ],
    [-0.5878836512565613, 0.724992573261261, -0.35885724425315857],
    [0.978624701499939, -0.2041550725698471, 0.024788090959191322],
    [0.9012409448623657, 0.3178061842918396, -0.2945573031902313],
    [-0.09062809497117996, 0.2679229974746704, 0.9591683149337769],
    [-0.2528945803642273, -0.22844965755939484, 0.940135657787323],
    [
        -0.6901527047157288,
        -0.22711855173110962,
        0.6870999932289124,
    ],
    [0.6512072682380676, 0.10269033908843994, 0.7519200444221497],
];

#[test]
fn silhouette_matches_scikit_learn() {
    let flat: Vec<f32> = MUS.iter().flatten().copied().collect();
    let labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2];
    let s = silhouette(&flat, 3, &labels, 3);
    // sklearn.metrics.silhouette_score(mus, labels, metric="cosine")
    let want = -0.037_664_942_762_260_095;
    assert!((s - want).abs() < 1e-6, "{s} vs {want}");
    // One cluster in use: no separation to measure.
    assert_eq!(silhouette(&flat, 3, &[1; 12], 3), -1.0);
}

#[test]
fn spearman_matches_scipy() {
    let a = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7];
    let b = [1.0, 3.0, 2.0, 6.0, 2.0, 5.0];
    // scipy.stats.spearmanr(a, b)[0], ties at their mean rank
    assert!((spearman(&a, &b) - 0.955_882_352_941_176_4).abs() < 1e-12);
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    assert_eq!(spearman(&[1.0], &[1.0]), 0.0);
}

#[test]
fn agreement_counts_neighbours_and_balance() {
    // 4 rows, 1 neighbour each: rows 0,1 neighbours of each other, 2,3 likewise.
    let nb = [1u32, 0, 3, 2];
    // Labels follow the pairs, two clusters of equal size: agreement 1, balance 1.
    assert!((agreement(&[0, 0, 1, 1], &nb, 2) - 1.0).abs() < 1e-12);
    // Everything in one cluster agrees with every neighbour but has no balance.
    assert_eq!(agreement(&[0, 0, 0, 0], &nb, 2), 0.0);
    // Labels across the pairs: no neighbour agrees.
    assert_eq!(agreement(&[0, 1, 0, 1], &nb, 2), 0.0);
    // One pair split: half the neighbours agree; sizes 3:1 give entropy 0.5623 / ln 2.
    let h = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln()) / 2f64.ln();
    assert!((agreement(&[0, 0, 0, 1], &nb, 2) - 0.5 * h).abs() < 1e-12);
}

#[test]
fn association_weighs_each_cluster_alike() {
    // 6 rows, 2 neighbours each: rows 0-3 among themselves; rows 4 and 5 each other and
    // row 3 (a small cluster on the large one's border).
    let nb = [1u32, 2, 0, 2, 3, 1, 2, 0, 5, 3, 4, 3];
    let two = [0, 0, 0, 0, 1, 1];
    // Pairs in one cluster: 8 of the large cluster's 8, 2 of the small one's 4.
    assert!((neighbour_agreement(&two, &nb) - 10.0 / 12.0).abs() < 1e-12);
    assert!((normalised_association(&two, &nb, 2) - (1.0 + 0.5) / 2.0).abs() < 1e-12);
    // The large cluster swallowing the small one: every pair agrees, but one of the two
    // clusters is empty.
    let one = [0; 6];
    assert_eq!(neighbour_agreement(&one, &nb), 1.0);
    assert!((normalised_association(&one, &nb, 2) - 0.5).abs() < 1e-12);
    // Swallowing row 4 alone: rows 0-4 keep 9 of their 10 pairs, row 5 none of 2.
    let grown = [0, 0, 0, 0, 0, 1];
    assert!((neighbour_agreement(&grown, &nb) - 9.0 / 12.0).abs() < 1e-12);
    assert!((normalised_association(&grown, &nb, 2) - 0.9 / 2.0).abs() < 1e-12);
    // A label out of range belongs to no cluster: its rows and pairs count nowhere.
    assert!((normalised_association(&[0, 0, 0, 0, 2, 2], &nb, 2) - 0.5).abs() < 1e-12);
}

#[test]
fn two_view_neighbours_need_both_views() {
    // Rows in 2-D. View a (raw): row 0 is nearest to 1 then 2 then 3; view b: nearest
    // to 3 then 1 then 2. Rank sums for row 0: row 1 = 0 + 1 = 1, row 2 = 1 + 2 = 3,
    // row 3 = 2 + 0 = 2: row 1 first, then 3.
    let a = [1.0, 0.0, 0.99, 0.14, 0.9, 0.43, 0.5, 0.86];
    let b = [1.0, 0.0, 0.9, 0.43, 0.5, 0.86, 0.99, 0.14];
    let nb = mine_neighbours_both(&a, &b, 2, 2);
    assert_eq!(&nb[..2], &[1, 3]);
    // Same data in both views: the plain cosine order.
    let nb = mine_neighbours_both(&a, &a, 2, 3);
    assert_eq!(&nb[..3], &[1, 2, 3]);
}

/// `n` rows of `d` values, each `value` of the words of a generator seeded `seed`; then
/// `repeat.0` rows from the first copied over the rows from `repeat.1` on.
fn rows_with_repeats(
    n: usize,
    d: usize,
    seed: u64,
    repeat: (usize, usize),
    mut value: impl FnMut(&mut dyn FnMut() -> u32) -> f32,
) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut next = || rng.next_u32();
    let mut x: Vec<f32> = (0..n * d).map(|_| value(&mut next)).collect();
    x.copy_within(0..repeat.0 * d, repeat.1 * d);
    x
}

#[test]
fn two_view_neighbours_are_the_rank_sums() {
    // Against the definition written plainly (a stable sort of every row by cosine in
    // each view, ranks summed, the smallest sums kept, ties to the smaller index), on
    // rows with repeats, zeros and disjoint supports (cosines tied, or exactly 0).
    let (n, d) = (157, 9);
    let a = rows_with_repeats(n, d, 0x9e37_79b9, (5, 20), |next| match next() % 4 {
        0 => 0.0,
        _ => (next() % 5) as f32 - 1.0,
    });
    let scaled: Vec<f32> = a
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i % d) as f32))
        .collect();
    // A second view unrelated to the first: the nearest rows of one are far in the
    // other, so the two views' first ranks do not settle the neighbours.
    let unrelated = rows_with_repeats(n, d, 7, (5, 20), |next| (next() % 7) as f32 - 3.0);
    for b in [scaled, unrelated] {
        rank_sums_against_definition(&a, &b, n, d);
    }
}

/// [`two_view_neighbours_are_the_rank_sums`] for one pair of views.
fn rank_sums_against_definition(a: &[f32], b: &[f32], n: usize, d: usize) {
    let unit = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(d)
            .flat_map(|r| {
                let nr = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                let s = if nr > 0.0 { 1.0 / nr } else { 0.0 };
                r.iter().map(move |v| v * s).collect::<Vec<_>>()
            })
            .collect()
    };
    for k in [1, 10, 64, n - 1] {
        let (ua, ub) = (unit(a), unit(b));
        let mut want = Vec::new();
        for i in 0..n {
            let mut rank = vec![0u32; n];
            for u in [&ua, &ub] {
                let mut sims: Vec<f32> = (0..n)
                    .map(|j| (0..d).map(|f| u[i * d + f] * u[j * d + f]).sum())
                    .collect();
                sims[i] = f32::NEG_INFINITY;
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&p, &q| sims[q].total_cmp(&sims[p]).then(p.cmp(&q)));
                for (r, &j) in idx.iter().enumerate() {
                    rank[j] += r as u32;
                }
            }
            let mut idx: Vec<u32> = (0..n as u32).filter(|&j| j as usize != i).collect();
            idx.sort_by_key(|&j| (rank[j as usize], j));
            want.extend_from_slice(&idx[..k]);
        }
        assert_eq!(mine_neighbours_both(a, b, d, k), want, "k = {k}");
    }
}

#[test]
fn euclidean_neighbours_are_the_nearest_by_definition() {
    // Against the definition written plainly (every other row sorted by its squared
    // distance summed in feature order, ties to the smaller index), on rows with
    // repeats (distances tied, or exactly 0).
    let (n, d) = (143, 7);
    let x = rows_with_repeats(n, d, 0x2545_f491, (4, 30), |next| {
        (next() % 7) as f32 * 0.5 - 1.0
    });
    for k in [1, 20, n - 1] {
        let mut want = Vec::new();
        for i in 0..n {
            let dist = |j: usize| -> f32 {
                (0..d)
                    .map(|f| (x[i * d + f] - x[j * d + f]) * (x[i * d + f] - x[j * d + f]))
                    .sum()
            };
            let mut idx: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            idx.sort_by(|&p, &q| dist(p).total_cmp(&dist(q)).then(p.cmp(&q)));
            want.extend(idx[..k].iter().map(|&j| j as u32));
        }
        assert_eq!(euclidean_neighbours(&x, d, k), want, "k = {k}");
    }
}

#[test]
fn restart_zero_is_the_plain_seed() {
    assert_eq!(restart_seed(42, 0), 42);
    assert_ne!(restart_seed(42, 1), restart_seed(42, 2));
}

fn result(name: &str, runs: &[(u64, f64, f64)]) -> SetResult {
    SetResult {
        name: name.into(),
        half: hvae_host::suite::Part::Tune,
        rows: 10,
        features: 2,
        clusters: 2,
        runs: runs
            .iter()
            .map(|&(seed, acc, nmi)| Run {
                seed,
                acc,
                nmi,
                ari: 0.0,
                seconds: 0.0,
                clusters: 2,
                restarts: Vec::new(),
                int8: None,
                choice: None,
            })
            .collect(),
        acc: Stat::default(),
        nmi: Stat::default(),
        ari: Stat::default(),
        seconds: Stat::default(),
        classical: BTreeMap::new(),
        best_acc: None,
        best_nmi: None,
    }
}

/// A restart with criteria (silhouette, agreement, consensus, association) and its ACC.
fn restart(seed: u64, c: [f64; 4], acc: f64) -> RestartScore {
    RestartScore {
        seed,
        criteria: Criteria {
            silhouette: c[0],
            agreement: c[1],
            consensus: c[2],
            association: c[3],
        },
        acc,
        nmi: 0.0,
    }
}

#[test]
fn criteria_summary_pools_a_sets_restarts_and_picks_as_the_training_does() {
    let mut a = result("a", &[(0, 0.0, 0.0), (1, 0.0, 0.0)]);
    a.runs[0].restarts = vec![
        restart(0, [0.1, 0.5, 0.3, 0.6], 0.7),
        restart(1, [0.3, 0.4, 0.3, 0.8], 0.9),
        restart(2, [0.2, 0.6, 0.2, 0.7], 0.8),
    ];
    a.runs[1].restarts = vec![
        restart(3, [0.5, 0.2, 0.4, 0.5], 0.6),
        restart(4, [0.4, 0.3, 0.4, 0.9], 0.95),
        restart(5, [0.6, 0.1, 0.1, 0.4], 0.5),
    ];
    // Two restarts: consensus cannot tell them apart, the run is left out (and so the
    // set, which has no other).
    let mut b = result("b", &[(0, 0.0, 0.0)]);
    b.runs[0].restarts = vec![
        restart(0, [0.9, 0.9, 0.9, 0.9], 0.0),
        restart(1, [0.1, 0.1, 0.1, 0.1], 1.0),
    ];
    assert!(criteria_summary(&[&b]).is_none());
    // Restarts that all score alike: picked like any other, left out of the mean rho.
    let mut same = result("same", &[(0, 0.0, 0.0)]);
    same.runs[0].restarts = vec![
        restart(0, [0.1, 0.2, 0.3, 0.4], 0.5),
        restart(1, [0.4, 0.3, 0.2, 0.1], 0.5),
        restart(2, [0.2, 0.2, 0.2, 0.2], 0.5),
    ];
    let with_same = criteria_summary(&[&a, &same]).expect("restarts");
    let only_a = criteria_summary(&[&a]).expect("restarts").criteria;
    for (w, o) in with_same.criteria.iter().zip(&only_a) {
        assert_eq!(w.rho, o.rho, "{w:?}");
        assert!(
            (w.picked - (2.0 * o.picked + 0.5) / 3.0).abs() < 1e-12,
            "{w:?}"
        );
    }
    assert!((with_same.mean_restart - (4.45 + 1.5) / 9.0).abs() < 1e-12);
    assert!((with_same.best_restart - (0.925 * 2.0 + 0.5) / 3.0).abs() < 1e-12);
    let summary = criteria_summary(&[&a, &b]).expect("restarts");
    let c = &summary.criteria;
    // scipy.stats.spearmanr over the six restarts of `a`; picked: the first of the
    // largest in each run (consensus ties in both runs: their first restarts).
    let want = [
        (Criterion::Silhouette, -0.428_571_428_571_428_6, 0.7),
        (Criterion::Agreement, 0.485_714_285_714_285_77, 0.875),
        (Criterion::Consensus, 0.441_367_414_752_374_73, 0.65),
        (Criterion::Association, 1.0, 0.925),
    ];
    assert_eq!(c.len(), want.len());
    for (got, (criterion, rho, picked)) in c.iter().zip(want) {
        assert_eq!(got.criterion, criterion);
        assert!(
            (got.rho - rho).abs() < 1e-12,
            "{criterion:?} rho {}",
            got.rho
        );
        assert!(
            (got.picked - picked).abs() < 1e-12,
            "{criterion:?} picked {}",
            got.picked
        );
    }
    assert!((summary.mean_restart - 4.45 / 6.0).abs() < 1e-12);
    assert!((summary.best_restart - 0.925).abs() < 1e-12);
}

#[test]
fn regressions_compare_the_same_seeds() {
    let committed = [result("a", &[(0, 0.90, 0.80), (1, 0.85, 0.75)])];
    // Within the tolerance, or better: nothing.
    assert!(regressions(&[result("a", &[(0, 0.89, 0.80)])], &committed, 0.02).is_empty());
    assert!(regressions(&[result("a", &[(1, 0.99, 0.99)])], &committed, 0.02).is_empty());
    // ACC of seed 0 fell by 0.05: one line naming the set, the seed and the measure.
    let bad = regressions(&[result("a", &[(0, 0.85, 0.80)])], &committed, 0.02);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("a seed 0: ACC"), "{}", bad[0]);
    // A set or seed the committed file lacks is not compared.
    assert!(regressions(&[result("b", &[(0, 0.1, 0.1)])], &committed, 0.02).is_empty());
    assert!(regressions(&[result("a", &[(7, 0.1, 0.1)])], &committed, 0.02).is_empty());
}

/// `result` scored against a best classical mean ACC and NMI, its statistics computed.
fn scored(name: &str, runs: &[(u64, f64, f64)], best: Option<(f64, f64)>) -> SetResult {
    let mut r = result(name, runs);
    r.best_acc = best.map(|(a, _)| Best {
        method: "kmeans".into(),
        value: a,
    });
    r.best_nmi = best.map(|(_, n)| Best {
        method: "ward".into(),
        value: n,
    });
    let seeds: Vec<u64> = runs.iter().map(|r| r.0).collect();
    r.on_seeds(&seeds)
}

#[test]
fn standings_are_held_on_the_same_seeds_against_the_same_classical_results() {
    let best = Some((0.85, 0.75));
    // At least the best (0.89 / 0.79), near it and steady (worst seed 0.88 against 0.89).
    let committed = [scored("a", &[(0, 0.90, 0.80), (1, 0.88, 0.78)], best)];
    let s = committed[0].standing();
    assert!(s.at_least_best && s.near_best && s.steady, "{s:?}");
    assert!((committed[0].acc.mean - 0.89).abs() < 1e-12);
    let lost = |runs: &[(u64, f64, f64)]| standings_lost(&[scored("a", runs, best)], &committed);
    // The same, or better: nothing lost.
    assert!(lost(&[(0, 0.90, 0.80), (1, 0.88, 0.78)]).is_empty());
    assert!(lost(&[(0, 0.99, 0.99), (1, 0.99, 0.99)]).is_empty());
    // One seed: compared with the committed seed 0 alone (which wins).
    assert!(lost(&[(0, 0.86, 0.76)]).is_empty());
    // 0.01 below the best ACC: no longer at least the best, still near it.
    let l = lost(&[(0, 0.84, 0.80), (1, 0.84, 0.80)]);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].starts_with("a: no longer at least the best classical method"),
        "{}",
        l[0]
    );
    // NMI 0.04 below the best: both of those lost.
    let l = lost(&[(0, 0.90, 0.71), (1, 0.90, 0.71)]);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l[1].starts_with("a: now more than 0.03 below"), "{}", l[1]);
    // Just within 0.03: near it still.
    assert_eq!(lost(&[(0, 0.90, 0.7201), (1, 0.90, 0.7201)]).len(), 1);
    // A worst seed 0.06 below the mean (0.96, 0.84: mean 0.90): no longer steady.
    let l = lost(&[(0, 0.96, 0.80), (1, 0.84, 0.80)]);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].starts_with("a: no longer steady"), "{}", l[0]);
    // A standing the committed run did not have cannot be lost.
    let below = [scored("a", &[(0, 0.70, 0.60), (1, 0.60, 0.60)], best)];
    assert!(standings_lost(
        &[scored("a", &[(0, 0.1, 0.1), (1, 0.1, 0.9)], best)],
        &below
    )
    .is_empty());
    // Seeds or sets the committed file lacks are not compared.
    assert!(lost(&[(0, 0.1, 0.1), (7, 0.1, 0.1)]).is_empty());
    assert!(standings_lost(&[scored("b", &[(0, 0.1, 0.1)], best)], &committed).is_empty());
    // Both are scored against the classical results of the run: against a best of 0.95 the
    // committed run never was at least the best, so falling below it loses nothing.
    let higher = Some((0.95, 0.75));
    assert!(standings_lost(
        &[scored("a", &[(0, 0.90, 0.80), (1, 0.86, 0.78)], higher)],
        &committed
    )
    .is_empty());
    // And a committed file without classical results is scored against the run's.
    let bare = [scored("a", &[(0, 0.90, 0.80), (1, 0.88, 0.78)], None)];
    assert_eq!(
        standings_lost(
            &[scored("a", &[(0, 0.84, 0.80), (1, 0.84, 0.80)], best)],
            &bare
        )
        .len(),
        1
    );
}

/// `hvae train --select`'s spellings are the criteria's names (the line that says which
/// restart was kept and the suite's summary print `Criterion::name`), one for each.
#[test]
fn select_spellings_are_the_criteria_names() {
    use clap::ValueEnum;
    use hvae_host::commands::train::SelectArg;
    let names: Vec<&str> = SelectArg::value_variants()
        .iter()
        .map(|a| {
            let spelling = a.to_possible_value().unwrap();
            assert_eq!(spelling.get_name(), a.criterion().name());
            a.criterion().name()
        })
        .collect();
    let all: Vec<&str> = Criterion::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names, all);
}
