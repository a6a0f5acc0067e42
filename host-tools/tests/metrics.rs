//! ACC / NMI / ARI against scikit-learn, and their invariances.

mod common;

use hvae_host::metrics::{accuracy, ari, nmi, scores};
use proptest::prelude::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

/// Expected values computed with scikit-learn 1.9.1 (host-tools/reference/.venv) by
/// `normalized_mutual_info_score(t, p)` (arithmetic mean), `adjusted_rand_score(t, p)`,
/// and ACC as `c[linear_sum_assignment(c, maximize=True)].sum() / len(t)` with
/// `c = contingency_matrix(t, p)` (scipy 1.17.1). The "random" vectors are
/// `numpy.random.default_rng(7).integers(0, 4, 40)` and then `.integers(0, 5, 40)`.
/// `(name, truth, prediction, acc, nmi, ari)`.
type Case = (&'static str, &'static [i64], &'static [i64], f64, f64, f64);

#[rustfmt::skip]
const CASES: &[Case] = &[
    ("same_count", &[0, 0, 0, 1, 1, 1, 2, 2, 2], &[0, 0, 1, 1, 1, 2, 2, 2, 0],
     0.6666666666666666, 0.42061983571430506, 0.1111111111111111),
    ("fewer_clusters", &[0, 0, 1, 1, 2, 2, 3, 3], &[1, 1, 1, 0, 0, 2, 2, 2],
     0.625, 0.5960096838099742, 0.2222222222222222),
    ("more_clusters", &[0, 0, 0, 0, 1, 1, 1, 1], &[0, 0, 1, 2, 3, 3, 4, 4],
     0.5, 0.6153846153846154, 0.27586206896551724),
    ("random",
     &[3, 2, 2, 3, 2, 3, 3, 0, 0, 1, 1, 3, 3, 0, 1, 3, 0, 3, 0, 1, 3, 1, 1, 1, 2, 1, 3, 1, 1, 2,
       2, 2, 2, 3, 3, 3, 2, 2, 1, 3],
     &[2, 1, 4, 0, 4, 3, 0, 0, 2, 0, 0, 2, 4, 2, 4, 4, 4, 3, 2, 2, 1, 2, 1, 1, 4, 0, 0, 0, 4, 3,
       4, 1, 3, 1, 2, 0, 3, 4, 3, 0],
     0.375, 0.17509099576812887, 0.0283183843854008),
    ("constant_truth", &[3, 3, 3, 3], &[0, 1, 0, 1], 0.5, 0.0, 0.0),
    ("both_constant", &[1, 1, 1], &[2, 2, 2], 1.0, 1.0, 1.0),
];

#[test]
fn match_scikit_learn() {
    for &(name, t, p, acc, n, a) in CASES {
        let s = scores(t, p);
        assert!(close(s.acc, acc), "{name}: acc {} vs {acc}", s.acc);
        assert!(close(s.nmi, n), "{name}: nmi {} vs {n}", s.nmi);
        assert!(close(s.ari, a), "{name}: ari {} vs {a}", s.ari);
    }
}

/// On the digits labels `t` with `p[i] = (3 t[i] + [i % 7 == 0] + 5 [i % 11 == 0]) % 12`;
/// scikit-learn 1.9.1 as above gives these values.
#[test]
fn match_scikit_learn_on_digits_sized_input() {
    let d = hvae_host::data::load(&common::digits_path()).unwrap();
    let t = d.labels().unwrap();
    let p: Vec<i64> = t
        .iter()
        .enumerate()
        .map(|(i, &l)| (3 * l + i64::from(i % 7 == 0) + 5 * i64::from(i % 11 == 0)) % 12)
        .collect();
    let s = scores(t, &p);
    assert!(close(s.acc, 0.39677239844184753), "{}", s.acc);
    assert!(close(s.nmi, 0.6039049458331299), "{}", s.nmi);
    assert!(close(s.ari, 0.39233216926066333), "{}", s.ari);
}

#[test]
fn empty_and_single() {
    let e: [u8; 0] = [];
    let s = scores(&e, &e);
    assert_eq!((s.acc, s.nmi, s.ari), (1.0, 1.0, 1.0));
    let s = scores(&[4], &[9]);
    assert_eq!((s.acc, s.nmi, s.ari), (1.0, 1.0, 1.0));
}

fn labelings() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (1usize..60).prop_flat_map(|n| {
        (
            proptest::collection::vec(0u8..6, n),
            proptest::collection::vec(0u8..8, n),
        )
    })
}

proptest! {
    #[test]
    fn invariant_under_renaming_clusters((t, p) in labelings(), shift in 0u8..50) {
        // An injective renaming of the predicted ids.
        let renamed: Vec<u32> = p.iter().map(|&x| u32::from(x) * 7 + u32::from(shift)).collect();
        let a = scores(&t, &p);
        let b = scores(&t, &renamed);
        prop_assert!(close(a.acc, b.acc) && close(a.nmi, b.nmi) && close(a.ari, b.ari));
    }

    #[test]
    fn symmetric_and_in_range((t, p) in labelings()) {
        let s = scores(&t, &p);
        prop_assert!((0.0..=1.0).contains(&s.acc));
        prop_assert!((0.0..=1.0 + 1e-12).contains(&s.nmi));
        prop_assert!((-1.0..=1.0).contains(&s.ari));
        prop_assert!(close(accuracy(&t, &p), accuracy(&p, &t)));
        prop_assert!(close(nmi(&t, &p), nmi(&p, &t)));
        prop_assert!(close(ari(&t, &p), ari(&p, &t)));
        // ACC is at least the largest class share that one cluster can claim.
        prop_assert!(s.acc * t.len() as f64 >= 1.0 - 1e-9);
    }

    #[test]
    fn identical_labelings_score_one(t in proptest::collection::vec(0u8..6, 1..60)) {
        let s = scores(&t, &t);
        prop_assert_eq!(s.acc, 1.0);
        prop_assert!(close(s.nmi, 1.0));
        prop_assert_eq!(s.ari, 1.0);
    }
}
