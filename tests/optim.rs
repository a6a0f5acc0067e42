//! Optimiser tests: textbook updates, convergence, clipping, and the all-or-nothing
//! guarantee on errors.

use hvae::train::optim::{
    clip_global_norm, global_norm, state_len, OptimConfig, OptimError, OptimKind, OptimState,
    Optimiser, StepInfo,
};

const P0: [f64; 3] = [0.5, -1.0, 2.0];
/// The gradients of the three steps (fixed, not functions of the parameters).
const G: [[f64; 3]; 3] = [[0.1, -0.2, 0.3], [-0.05, 0.4, 0.0], [0.2, 0.1, -0.6]];

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1e-300),
            "{what}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

/// Three steps of `cfg` in `state` from `P0` on the gradients `G`: each step's info must
/// pass `check(t, info)`, and the parameters after it match `want[t]` to `rel`.
fn three_steps<S: AsRef<[f64]> + AsMut<[f64]>>(
    cfg: &OptimConfig<f64>,
    state: &mut OptimState<S>,
    want: &[[f64; 3]; 3],
    rel: f64,
    what: &str,
    check: impl Fn(usize, StepInfo<f64>),
) {
    let mut p = P0;
    for t in 0..3 {
        check(t, state.step(cfg, &mut p, &G[t]).unwrap());
        assert_close(&p, &want[t], rel, what);
    }
}

/// Textbook Adam (Kingma & Ba, algorithm 1) written independently in f64, compared with
/// numbers from a separate Python implementation of the same formulas.
fn adam_reference() -> [[f64; 3]; 3] {
    let (lr, b1, b2, eps) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut p = P0;
    let mut m = [0.0; 3];
    let mut v = [0.0; 3];
    let mut out = [[0.0; 3]; 3];
    for (t, g) in G.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..3 {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t));
            let vh = v[i] / (1.0 - b2.powi(t));
            p[i] -= lr * mh / (vh.sqrt() + eps);
        }
        out[t as usize - 1] = p;
    }
    out
}

#[test]
fn adam_matches_textbook_for_three_steps() {
    // From python3 with the textbook formulas.
    let python = [
        [0.40000000999999896, -0.9000000049999998, 1.9000000033333333],
        [0.37336630940339083, -0.9366103565460369, 1.8329941810791546],
        [0.30755515435138137, -0.9781754749638348, 1.866997627240353],
    ];
    let reference = adam_reference();
    for t in 0..3 {
        assert_close(&reference[t], &python[t], 1e-14, "reference vs python");
    }

    let cfg = OptimConfig::new(Optimiser::adam(0.1));
    let mut state = OptimState::new([0.0f64; state_len(OptimKind::Adam, 3)]);
    three_steps(&cfg, &mut state, &python, 1e-13, "adam f64", |t, info| {
        assert_eq!(info.step, t as u32 + 1);
        assert!(!info.clipped);
        assert_close(&[info.grad_norm], &[global_norm(&G[t])], 0.0, "grad norm");
    });
    // Moments after three steps, also from python.
    let m = [
        0.023599999999999996,
        0.029799999999999993,
        -0.03569999999999999,
    ];
    let v = [
        5.2477510000000055e-05,
        0.00020976004000000022,
        0.00044982009000000037,
    ];
    assert_close(&state.storage()[..3], &m, 1e-13, "m");
    assert_close(&state.storage()[3..], &v, 1e-13, "v");
    assert_eq!(state.steps(), 3);

    // f32 follows the same path within f32 rounding.
    let cfg32 = OptimConfig::new(Optimiser::adam(0.1f32));
    let mut state32 = OptimState::new([0.0f32; 6]);
    let mut p32 = P0.map(|x| x as f32);
    for t in 0..3 {
        state32
            .step(&cfg32, &mut p32, &G[t].map(|x| x as f32))
            .unwrap();
        assert_close(&p32.map(f64::from), &python[t], 1e-5, "adam f32");
    }
}

#[test]
fn sgd_momentum_matches_textbook_for_three_steps() {
    // v <- 0.9 v + g; p <- p - 0.1 v, from python3.
    let python = [
        [0.49, -0.98, 1.97],
        [0.486, -1.002, 1.943],
        [0.4624, -1.0318, 1.9787000000000001],
    ];
    let cfg = OptimConfig::new(Optimiser::sgd(0.1, 0.9));
    let mut state = OptimState::new(vec![0.0f64; state_len(OptimKind::Sgd, 3)]);
    three_steps(&cfg, &mut state, &python, 1e-14, "sgd", |_, _| {});
    assert_close(
        state.storage(),
        &[0.23600000000000002, 0.29800000000000004, -0.357],
        1e-14,
        "velocity",
    );
}

#[test]
fn sgd_with_clipping_and_weight_decay_matches_textbook() {
    // g <- g * min(1, 0.25 / |g|) + 0.01 p; v <- 0.9 v + g; p <- p - 0.1 v, from python3.
    let python = [
        [0.4928184689521894, -0.9856369379043788, 1.9779554068565681],
        [0.48896314090493787, -0.996531491998257, 1.956137317620623],
        [0.47719569442707627, -1.0092444032379642, 1.9579709642739425],
    ];
    let norms = [0.37416573867739417, 0.4031128874149275, 0.6403124237432849];
    let cfg = OptimConfig::new(Optimiser::sgd(0.1, 0.9))
        .with_clip_norm(0.25)
        .with_weight_decay(0.01);
    let mut state = OptimState::new([0.0f64; 3]);
    three_steps(
        &cfg,
        &mut state,
        &python,
        1e-14,
        "sgd clip wd",
        |t, info| {
            assert!(info.clipped);
            assert_close(&[info.grad_norm], &[norms[t]], 1e-15, "norm");
        },
    );
}

/// Runs `steps` updates of `cfg` on `grad` from `x0`.
fn minimise(
    cfg: OptimConfig<f64>,
    x0: &[f64],
    steps: usize,
    grad: impl Fn(&[f64], &mut [f64]),
) -> Vec<f64> {
    let n = x0.len();
    let mut state = OptimState::new(vec![0.0; state_len(cfg.optimiser.kind(), n)]);
    let mut x = x0.to_vec();
    let mut g = vec![0.0; n];
    for _ in 0..steps {
        grad(&x, &mut g);
        state.step(&cfg, &mut x, &g).unwrap();
    }
    x
}

/// `f(x) = 1/2 sum_i a_i (x_i - b_i)^2`, condition number 100.
fn quadratic_grad(x: &[f64], g: &mut [f64]) {
    const A: [f64; 4] = [1.0, 10.0, 100.0, 0.5];
    const B: [f64; 4] = [1.0, -2.0, 0.5, 3.0];
    for i in 0..4 {
        g[i] = A[i] * (x[i] - B[i]);
    }
}

/// Rosenbrock `f(x, y) = (1 - x)^2 + 100 (y - x^2)^2`, minimum at (1, 1).
fn rosenbrock_grad(x: &[f64], g: &mut [f64]) {
    g[0] = -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]);
    g[1] = 200.0 * (x[1] - x[0] * x[0]);
}

#[test]
fn both_minimise_a_convex_quadratic() {
    let want = [1.0, -2.0, 0.5, 3.0];
    let x0 = [0.0; 4];
    for (name, cfg, steps) in [
        ("sgd", OptimConfig::new(Optimiser::sgd(0.01, 0.9)), 3000),
        ("adam", OptimConfig::new(Optimiser::adam(0.01)), 5000),
    ] {
        let x = minimise(cfg, &x0, steps, quadratic_grad);
        for i in 0..4 {
            assert!((x[i] - want[i]).abs() < 1e-9, "{name}: x = {x:?}");
        }
    }
}

#[test]
fn both_minimise_rosenbrock() {
    let x0 = [-1.2, 1.0];
    // Adam with a constant step keeps hovering near the minimum; SGD converges fully.
    for (name, cfg, steps, tol) in [
        (
            "sgd",
            OptimConfig::new(Optimiser::sgd(1e-3, 0.9)),
            20_000,
            1e-10,
        ),
        (
            "adam",
            OptimConfig::new(Optimiser::adam(1e-2)),
            20_000,
            1e-4,
        ),
    ] {
        let x = minimise(cfg, &x0, steps, rosenbrock_grad);
        assert!(
            (x[0] - 1.0).abs() < tol && (x[1] - 1.0).abs() < tol,
            "{name}: x = {x:?}"
        );
    }
}

#[test]
fn clipping_scales_to_exactly_the_max_norm() {
    let mut g = [3.0f64, -4.0, 12.0]; // norm 13
    let before = clip_global_norm(&mut g, 1.3);
    assert_eq!(before, 13.0);
    let after = global_norm(&g);
    assert!((after - 1.3).abs() <= 2.0 * f64::EPSILON * 1.3, "{after}");
    // Direction kept.
    assert_close(&g, &[0.3, -0.4, 1.2], 4.0 * f64::EPSILON, "direction");

    // f32, many elements.
    let mut g: Vec<f32> = (0..1000)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.7)
        .collect();
    let before = clip_global_norm(&mut g, 5.0);
    assert!(before > 5.0);
    let after = global_norm(&g);
    assert!((after - 5.0).abs() <= 8.0 * f32::EPSILON * 5.0, "{after}");

    // Below the max: untouched, bit for bit.
    let mut g = [0.1f32, -0.2, 0.3];
    let orig = g;
    clip_global_norm(&mut g, 1.0);
    assert_eq!(g.map(f32::to_bits), orig.map(f32::to_bits));

    // Non-finite: untouched, NaN / infinite norm reported.
    let mut g = [1.0f32, f32::INFINITY, 2.0];
    assert_eq!(clip_global_norm(&mut g, 1.0), f32::INFINITY);
    assert_eq!(g, [1.0, f32::INFINITY, 2.0]);
    let mut g = [1.0f32, f32::INFINITY, f32::NAN];
    assert!(clip_global_norm(&mut g, 1.0).is_nan());
    assert_eq!(g[0], 1.0);

    // Clipping inside step: the clipped update equals a step on the pre-clipped gradient.
    let cfg = OptimConfig::new(Optimiser::adam(0.01)).with_clip_norm(0.5);
    let mut s1 = OptimState::new([0.0f64; 6]);
    let mut s2 = OptimState::new([0.0f64; 6]);
    let (mut p1, mut p2) = (P0, P0);
    let g = [3.0, -4.0, 12.0];
    let info = s1.step(&cfg, &mut p1, &g).unwrap();
    assert!(info.clipped && info.grad_norm == 13.0);
    let mut gc = g;
    clip_global_norm(&mut gc, 0.5);
    s2.step(&OptimConfig::new(Optimiser::adam(0.01)), &mut p2, &gc)
        .unwrap();
    assert_eq!(p1.map(f64::to_bits), p2.map(f64::to_bits));
    assert_eq!(s1, s2);
}

#[test]
fn norm_does_not_overflow_or_underflow() {
    let big = [3.0e30f32, 4.0e30];
    assert!((global_norm(&big) / 5.0e30 - 1.0).abs() < 1e-6);
    let big = [3.0e200f64, -4.0e200];
    assert!((global_norm(&big) / 5.0e200 - 1.0).abs() < 1e-15);
    let tiny = [3.0e-30f32, 4.0e-30];
    assert!((global_norm(&tiny) / 5.0e-30 - 1.0).abs() < 1e-6);
    assert_eq!(global_norm::<f32>(&[]), 0.0);
    assert_eq!(global_norm(&[0.0f32, -0.0]), 0.0);
    // Clip a huge gradient to norm 1.
    let mut g = [3.0e30f32, 4.0e30];
    clip_global_norm(&mut g, 1.0);
    assert!(
        (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
        "{g:?}"
    );
}

fn bits(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// A state that has already taken two steps, so moments are non-zero.
fn warmed(cfg: &OptimConfig<f64>) -> (OptimState<Vec<f64>>, [f64; 3]) {
    let mut state = OptimState::new(vec![0.0; state_len(cfg.optimiser.kind(), 3)]);
    let mut p = P0;
    state.step(cfg, &mut p, &G[0]).unwrap();
    state.step(cfg, &mut p, &G[1]).unwrap();
    (state, p)
}

/// Asserts that a step of `state` with `cfg` and gradient `g` is refused with `err`
/// and changes neither the parameters `p` nor the state (moments and step count).
fn refused_unchanged(
    state: &mut OptimState<Vec<f64>>,
    cfg: &OptimConfig<f64>,
    p: &mut [f64],
    g: &[f64],
    err: OptimError,
) {
    let (sb, pb, steps) = (bits(state.storage()), bits(p), state.steps());
    assert_eq!(state.step(cfg, p, g), Err(err));
    assert_eq!(bits(p), pb);
    assert_eq!(bits(state.storage()), sb);
    assert_eq!(state.steps(), steps);
}

#[test]
fn non_finite_gradient_changes_nothing() {
    for opt in [Optimiser::adam(0.1), Optimiser::sgd(0.1, 0.9)] {
        let cfg = OptimConfig::new(opt).with_clip_norm(1.0);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for pos in 0..3 {
                let (mut state, mut p) = warmed(&cfg);
                let mut g = G[2];
                g[pos] = bad;
                let g_bits = bits(&g);
                refused_unchanged(&mut state, &cfg, &mut p, &g, OptimError::NonFiniteGradient);
                assert_eq!(bits(&g), g_bits);
                // And the state still works.
                state.step(&cfg, &mut p, &G[2]).unwrap();
                assert_eq!(state.steps(), 3);
            }
        }
    }
}

#[test]
fn non_finite_update_changes_nothing() {
    // A finite gradient whose square overflows in Adam's second moment, placed last so
    // that a single-pass implementation would already have written the first two.
    let cfg = OptimConfig::new(Optimiser::adam(0.1));
    let (mut state, mut p) = warmed(&cfg);
    let g = [0.1, 0.2, 1.0e200];
    refused_unchanged(&mut state, &cfg, &mut p, &g, OptimError::NonFiniteUpdate);
    assert_eq!(state.steps(), 2);

    // An Adam step whose parameter overflows (finite moments; the cheap bound fails
    // and the exact update decides), and one where only the bound is infinite.
    // The first update is lr * g / (|g| + eps), about lr.
    let cfg = OptimConfig::new(Optimiser::adam(1.0e308));
    let mut state = OptimState::new([0.0f64; 6]);
    let mut p = [0.0, -1.0e308, 0.0];
    assert_eq!(
        state.step(&cfg, &mut p, &[1.0, 1.0, 1.0]),
        Err(OptimError::NonFiniteUpdate)
    );
    assert_eq!(p, [0.0, -1.0e308, 0.0]);
    assert_eq!(state.storage(), &[0.0; 6]);
    let mut p = [0.0, 1.0e308, 0.0];
    // lr / eps overflows, but 1e308 - 1e308 / (1 + eps) is finite.
    state.step(&cfg, &mut p, &[1.0, 1.0, 1.0]).unwrap();
    assert!(p.iter().all(|v| v.is_finite()), "{p:?}");

    // An SGD step whose parameter overflows.
    let cfg = OptimConfig::new(Optimiser::sgd(1.0e300, 0.9));
    let (mut state, mut p) = warmed(&OptimConfig::new(Optimiser::sgd(0.1, 0.9)));
    let g = [0.0, 0.0, 1.0e10];
    refused_unchanged(&mut state, &cfg, &mut p, &g, OptimError::NonFiniteUpdate);
    assert_eq!(state.steps(), 2);

    // A non-finite parameter cannot be updated either.
    let cfg = OptimConfig::new(Optimiser::sgd(0.1, 0.0));
    let mut state = OptimState::new([0.0f64; 2]);
    let mut p = [1.0, f64::NAN];
    assert_eq!(
        state.step(&cfg, &mut p, &[1.0, 1.0]),
        Err(OptimError::NonFiniteUpdate)
    );
    assert_eq!(p[0], 1.0);
    assert_eq!(state.storage(), &[0.0, 0.0]);
    assert_eq!(state.steps(), 0);
}

#[test]
fn length_mismatch_changes_nothing() {
    let adam = OptimConfig::new(Optimiser::adam(0.1f32));
    let sgd = OptimConfig::new(Optimiser::sgd(0.1f32, 0.9));
    let mut p = [1.0f32, 2.0, 3.0];
    // grads shorter than params
    let mut state = OptimState::new([0.0f32; 6]);
    assert_eq!(
        state.step(&adam, &mut p, &[1.0, 2.0]),
        Err(OptimError::LengthMismatch)
    );
    // state sized for SGD used with Adam, and the reverse
    let mut state = OptimState::new([0.0f32; 3]);
    assert_eq!(
        state.step(&adam, &mut p, &[1.0; 3]),
        Err(OptimError::LengthMismatch)
    );
    let mut state = OptimState::new([0.0f32; 6]);
    assert_eq!(
        state.step(&sgd, &mut p, &[1.0; 3]),
        Err(OptimError::LengthMismatch)
    );
    assert_eq!(p, [1.0, 2.0, 3.0]);
    assert_eq!(state.steps(), 0);
    // A state over a sub-slice of a larger buffer is fine.
    let mut buf = [0.0f32; 10];
    let mut state = OptimState::new(&mut buf[..6]);
    state.step(&adam, &mut p, &[1.0; 3]).unwrap();
    assert_eq!(state.steps(), 1);
}

#[test]
fn invalid_config_is_rejected() {
    let mut p = [1.0f32];
    let mut state = OptimState::new([0.0f32; 2]);
    for cfg in [
        OptimConfig::new(Optimiser::adam(-0.1f32)),
        OptimConfig::new(Optimiser::adam(f32::NAN)),
        OptimConfig::new(Optimiser::adam_with(0.1, 1.0, 0.999, 1e-8)),
        OptimConfig::new(Optimiser::adam_with(0.1, 0.9, 1.0, 1e-8)),
        OptimConfig::new(Optimiser::adam_with(0.1, 0.9, 0.999, 0.0)),
        OptimConfig::new(Optimiser::adam(0.1)).with_clip_norm(0.0),
        OptimConfig::new(Optimiser::adam(0.1)).with_weight_decay(-1.0),
    ] {
        assert_eq!(
            state.step(&cfg, &mut p, &[1.0]),
            Err(OptimError::InvalidConfig),
            "{cfg:?}"
        );
    }
    let mut state = OptimState::new([0.0f32; 1]);
    for cfg in [
        OptimConfig::new(Optimiser::sgd(0.1f32, 1.0)),
        OptimConfig::new(Optimiser::sgd(f32::INFINITY, 0.5)),
    ] {
        assert_eq!(
            state.step(&cfg, &mut p, &[1.0]),
            Err(OptimError::InvalidConfig)
        );
    }
    assert_eq!(p, [1.0]);
}

#[test]
fn reset_zeroes_state_and_counter() {
    let cfg = OptimConfig::new(Optimiser::adam(0.1));
    let (mut state, _) = warmed(&cfg);
    assert!(state.storage().iter().any(|&x| x != 0.0));
    state.reset();
    assert!(state.storage().iter().all(|&x| x.to_bits() == 0));
    assert_eq!(state.steps(), 0);
    // After a reset, the first step equals a fresh optimiser's first step.
    let mut p = P0;
    state.step(&cfg, &mut p, &G[0]).unwrap();
    let mut fresh = OptimState::new(vec![0.0; 6]);
    let mut q = P0;
    fresh.step(&cfg, &mut q, &G[0]).unwrap();
    assert_eq!(bits(&p), bits(&q));
    assert_eq!(state, fresh);
}

#[test]
fn state_len_is_const_and_exact() {
    const N: usize = 91;
    const ADAM: usize = state_len(OptimKind::Adam, N);
    const SGD: usize = state_len(OptimKind::Sgd, N);
    static STATE: [f32; ADAM] = [0.0; ADAM];
    assert_eq!(STATE.len(), 182);
    assert_eq!(SGD, 91);
    assert_eq!(core::mem::size_of_val(&STATE), 728);
    const CFG: OptimConfig<f32> = OptimConfig {
        optimiser: Optimiser::sgd(0.01, 0.9),
        clip_norm: Some(5.0),
        weight_decay: 0.0,
    };
    assert_eq!(CFG.optimiser.kind(), OptimKind::Sgd);
    let resumed = OptimState::from_parts([0.0f32; SGD], 7);
    assert_eq!(resumed.steps(), 7);
    assert_eq!(resumed.into_parts().1, 7);
}

#[test]
fn errors_display() {
    for e in [
        OptimError::LengthMismatch,
        OptimError::InvalidConfig,
        OptimError::NonFiniteGradient,
        OptimError::NonFiniteUpdate,
    ] {
        let s = e.to_string();
        assert!(!s.is_empty());
        let _: &dyn core::error::Error = &e;
    }
}

mod factored {
    //! The factored second moment: its size, its value against full Adam where the
    //! two agree (a rank-1 pattern of squared gradients, and every vector), against an
    //! independent reference where they do not, blocks against whole steps, errors.

    use super::assert_close;
    use hvae::shape::{Scope, Shape};
    use hvae::train::optim::{
        second_moment_len, state_len, state_len_in, OptimConfig, OptimError, OptimKind, OptimState,
        Optimiser,
    };

    /// Weight matrices 3x4, 2x3, the centres 2x2, 3x2 and 4x3; vectors between them.
    const SHAPE: Shape = Shape::new(4, &[3], 2, 2);
    const FULL: core::ops::Range<usize> = SHAPE.scope_range(Scope::Full);
    const N: usize = FULL.end - FULL.start;

    fn matrices() -> Vec<(usize, usize, usize)> {
        matrices_of(&SHAPE)
    }

    /// The factored matrices of a shape's full scope, `(first value, rows, columns)`: its
    /// weight matrices, each of more than 1024 values cut into bands of as many whole
    /// rows as hold 1024 values.
    fn matrices_of(shape: &Shape) -> Vec<(usize, usize, usize)> {
        let full = shape.scope_range(Scope::Full);
        let mut out = Vec::new();
        for t in shape.tensors().filter(|t| t.offset >= full.start) {
            let per = if t.rows * t.cols > 1024 {
                1024 / t.cols
            } else {
                t.rows
            };
            let mut first = 0;
            while first < t.rows {
                let rows = per.min(t.rows - first);
                if rows > 1 && t.cols > 1 {
                    out.push((t.offset - full.start + first * t.cols, rows, t.cols));
                }
                first += rows;
            }
        }
        out
    }

    fn in_matrix(q: usize) -> Option<(usize, usize, usize, usize)> {
        in_matrix_of(&matrices(), q)
    }

    fn in_matrix_of(
        mats: &[(usize, usize, usize)],
        q: usize,
    ) -> Option<(usize, usize, usize, usize)> {
        mats.iter()
            .find(|&&(at, r, c)| q >= at && q < at + r * c)
            .map(|&(at, r, c)| (at, r, c, q - at))
    }

    #[test]
    fn state_counts_rows_and_columns_of_each_matrix() {
        const SECOND: usize = second_moment_len(&SHAPE, FULL);
        assert_eq!(N, 59);
        // (3+4) + 3 + (2+3) + 2 + 3 + 1 + (2+2) + 1 + 2 + (3+2) + 3 + (4+3) + 4
        assert_eq!(SECOND, 47);
        assert_eq!(state_len_in(OptimKind::Factored, &SHAPE, FULL), N + 47);
        assert_eq!(state_len_in(OptimKind::FactoredRms, &SHAPE, FULL), 47);
        assert_eq!(state_len_in(OptimKind::Adam, &SHAPE, FULL), 2 * N);
        assert_eq!(state_len_in(OptimKind::Sgd, &SHAPE, FULL), N);
        // A 64-24-8 network, K = 10: 3692 trained parameters, matrices 24x64 (bands
        // of 16 and 8 rows: 16 + 64 + 8 + 64), 8x24, 10x8, 24x8 and 64x24 (bands of 42
        // and 22 rows: 42 + 24 + 22 + 24), so 152 + 32 + 18 + 32 + 112 values, and 156
        // values of vectors.
        const SCRATCH: Shape = Shape::new(64, &[24], 8, 10);
        let r = SCRATCH.scope_range(Scope::Full);
        assert_eq!(r.len(), 3692);
        assert_eq!(second_moment_len(&SCRATCH, r.clone()), 502);
        assert_eq!(state_len_in(OptimKind::Factored, &SCRATCH, r), 3692 + 502);
        // The segmenter alone: the centres (2x2) factored, ln kappa_s and the weights not.
        let seg = SHAPE.scope_range(Scope::SegmenterOnly);
        assert_eq!(second_moment_len(&SHAPE, seg), 4 + 1 + 2);
    }

    /// A gradient for step `t`: each matrix `s_t u_i w_j` (squares of rank 1, the same
    /// pattern every step), each vector value its own sequence.
    fn rank_one_grads(t: usize) -> Vec<f64> {
        let s = [1.0, -0.5, 2.0, 0.25, -1.5][t % 5];
        (0..N)
            .map(|q| match in_matrix(q) {
                Some((_, _, c, k)) => {
                    let (i, j) = (k / c, k % c);
                    s * (0.3 + 0.2 * i as f64) * (1.1 - 0.25 * j as f64)
                }
                None => 0.1 * (((q * 7 + t * 3) % 11) as f64 - 5.0),
            })
            .collect()
    }

    fn start() -> Vec<f64> {
        (0..N).map(|q| 0.1 * ((q % 9) as f64 - 4.0)).collect()
    }

    #[test]
    fn equals_adam_when_the_squared_gradients_are_rank_one() {
        let lr = 0.05;
        let (adam, factored) = (
            OptimConfig::new(Optimiser::<f64>::adam(lr)),
            OptimConfig::new(Optimiser::<f64>::factored(lr)),
        );
        let mut a = OptimState::new(vec![0.0; state_len(OptimKind::Adam, N)]);
        let mut f = OptimState::new(vec![0.0; state_len_in(OptimKind::Factored, &SHAPE, FULL)]);
        let (mut pa, mut pf) = (start(), start());
        for t in 0..5 {
            let g = rank_one_grads(t);
            a.step(&adam, &mut pa, &g).unwrap();
            f.step_in(&factored, (&SHAPE, FULL), &mut pf, &g).unwrap();
            assert_close(&pf, &pa, 1e-12, "factored vs Adam");
            // Vectors keep Adam's arithmetic: bit for bit.
            for q in (0..N).filter(|&q| in_matrix(q).is_none()) {
                assert_eq!(pf[q].to_bits(), pa[q].to_bits(), "vector value {q}");
            }
        }
        // The first moments are Adam's too, bit for bit (same layout, first).
        assert_eq!(f.storage()[..N], a.storage()[..N]);
        assert_ne!(pf, start());
    }

    /// Independent f64 reference of one factored step for a full-rank gradient.
    fn reference(steps: &[Vec<f64>], lr: f64, b1: f64, first: bool) -> Vec<f64> {
        reference_of(&matrices(), start(), steps, (lr, b1, first))
    }

    /// [`reference`] from `p` with the factored matrices `mats` ([`matrices_of`]).
    fn reference_of(
        mats: &[(usize, usize, usize)],
        mut p: Vec<f64>,
        steps: &[Vec<f64>],
        (lr, b1, first): (f64, f64, bool),
    ) -> Vec<f64> {
        let (b2, eps) = (0.999f64, 1e-8f64);
        let n = p.len();
        let mut m = vec![0.0; n];
        let mut v = vec![0.0; n];
        let mut rows: Vec<Vec<f64>> = mats.iter().map(|&(_, r, _)| vec![0.0; r]).collect();
        let mut cols: Vec<Vec<f64>> = mats.iter().map(|&(_, _, c)| vec![0.0; c]).collect();
        for (t, g) in steps.iter().enumerate() {
            let t = (t + 1) as i32;
            let mut vhat = vec![0.0; n];
            for (k, &(at, r, c)) in mats.iter().enumerate() {
                for i in 0..r {
                    let ms: f64 = (0..c).map(|j| g[at + i * c + j].powi(2)).sum::<f64>() / c as f64;
                    rows[k][i] = b2 * rows[k][i] + (1.0 - b2) * ms;
                }
                for j in 0..c {
                    let ms: f64 = (0..r).map(|i| g[at + i * c + j].powi(2)).sum::<f64>() / r as f64;
                    cols[k][j] = b2 * cols[k][j] + (1.0 - b2) * ms;
                }
                let mean: f64 = rows[k].iter().sum::<f64>() / r as f64;
                for i in 0..r {
                    for j in 0..c {
                        vhat[at + i * c + j] = rows[k][i] * cols[k][j] / mean / (1.0 - b2.powi(t));
                    }
                }
            }
            for q in 0..n {
                if in_matrix_of(mats, q).is_none() {
                    v[q] = b2 * v[q] + (1.0 - b2) * g[q] * g[q];
                    vhat[q] = v[q] / (1.0 - b2.powi(t));
                }
                let mhat = if first {
                    m[q] = b1 * m[q] + (1.0 - b1) * g[q];
                    m[q] / (1.0 - b1.powi(t))
                } else {
                    g[q]
                };
                p[q] -= lr * mhat / (vhat[q].sqrt() + eps);
            }
        }
        p
    }

    fn full_rank_grads(t: usize) -> Vec<f64> {
        (0..N)
            .map(|q| 0.05 * (((q * 13 + t * 5) % 17) as f64 - 8.0) + 0.01)
            .collect()
    }

    #[test]
    fn matches_an_independent_reference_for_full_rank_gradients() {
        let steps: Vec<Vec<f64>> = (0..4).map(full_rank_grads).collect();
        for (opt, first) in [
            (Optimiser::<f64>::factored(0.05), true),
            (Optimiser::<f64>::factored_rms(0.05), false),
        ] {
            let cfg = OptimConfig::new(opt);
            let len = state_len_in(opt.kind(), &SHAPE, FULL);
            let mut s = OptimState::new(vec![0.0; len]);
            let mut p = start();
            for g in &steps {
                s.step_in(&cfg, (&SHAPE, FULL), &mut p, g).unwrap();
            }
            let want = reference(&steps, 0.05, 0.9, first);
            assert_close(&p, &want, 1e-12, "factored vs reference");
            // Not Adam: the pattern is not rank 1, so factoring changes the update.
            let mut a = OptimState::new(vec![0.0; state_len(OptimKind::Adam, N)]);
            let mut pa = start();
            let adam = OptimConfig::new(Optimiser::<f64>::adam(0.05));
            for g in &steps {
                a.step(&adam, &mut pa, g).unwrap();
            }
            let differ = (0..N).filter(|&q| (pa[q] - p[q]).abs() > 1e-6).count();
            assert!(differ > 10, "{differ} values differ from Adam's");
        }
    }

    #[test]
    fn a_matrix_of_more_than_1024_values_is_factored_by_bands_of_rows() {
        // Encoder layer 30x40 (bands of 25 and 5 rows), decoder output layer 40x30
        // (bands of 34 and 6 rows); the rest within one band.
        const WIDE: Shape = Shape::new(40, &[30], 2, 2);
        let full = WIDE.scope_range(Scope::Full);
        let n = full.len();
        let mats = matrices_of(&WIDE);
        let shapes: Vec<(usize, usize)> = mats.iter().map(|&(_, r, c)| (r, c)).collect();
        // The encoder's bands, the direction head, the centres, the decoder's hidden
        // layer and its output layer's bands.
        assert_eq!(
            shapes,
            [
                (25, 40),
                (5, 40),
                (2, 30),
                (2, 2),
                (30, 2),
                (34, 30),
                (6, 30)
            ]
        );
        let enc = mats[0];
        assert_eq!(enc.0 + 25 * 40, mats[1].0);
        let second: usize = (0..n).filter(|&q| in_matrix_of(&mats, q).is_none()).count()
            + mats.iter().map(|&(_, r, c)| r + c).sum::<usize>();
        assert_eq!(second_moment_len(&WIDE, full.clone()), second);
        // Encoder (25+40) + (5+40) + 30, heads (2+30) + 2 + 30 + 1, segmenter (2+2) + 1
        // + 2, decoder (30+2) + 30 + (34+30) + (6+30) + 40.
        assert_eq!(second, 414);
        let steps: Vec<Vec<f64>> = (0..3)
            .map(|t| {
                (0..n)
                    .map(|q| 0.05 * (((q * 13 + t * 5) % 17) as f64 - 8.0) + 0.01)
                    .collect()
            })
            .collect();
        let p0: Vec<f64> = (0..n).map(|q| 0.1 * ((q % 9) as f64 - 4.0)).collect();
        for (opt, first) in [
            (Optimiser::<f64>::factored(0.05), true),
            (Optimiser::<f64>::factored_rms(0.05), false),
        ] {
            let cfg = OptimConfig::new(opt);
            let mut s = OptimState::new(vec![0.0; state_len_in(opt.kind(), &WIDE, full.clone())]);
            let mut p = p0.clone();
            for g in &steps {
                s.step_in(&cfg, (&WIDE, full.clone()), &mut p, g).unwrap();
            }
            let want = reference_of(&mats, p0.clone(), &steps, (0.05, 0.9, first));
            assert_close(&p, &want, 1e-12, "banded factored vs reference");
        }
        // A block that holds a band whole is updated; one that cuts a band is refused.
        let cfg = OptimConfig::new(Optimiser::<f64>::factored_rms(0.05));
        let mut s = OptimState::new(vec![
            0.0;
            state_len_in(
                OptimKind::FactoredRms,
                &WIDE,
                full.clone()
            )
        ]);
        let (mut p, g) = (p0.clone(), steps[0].clone());
        let band = enc.0..enc.0 + 25 * 40;
        s.step_part_in(
            &cfg,
            (&WIDE, full.clone()),
            &mut p[band.clone()],
            &g[band.clone()],
            band.start,
        )
        .unwrap();
        let cut = enc.0..enc.0 + 24 * 40;
        assert_eq!(
            s.step_part_in(
                &cfg,
                (&WIDE, full.clone()),
                &mut p[cut.clone()],
                &g[cut.clone()],
                cut.start
            ),
            Err(OptimError::LengthMismatch)
        );
    }

    #[test]
    fn without_tensors_it_is_adam_bit_for_bit() {
        let g: Vec<f32> = (0..N).map(|q| 0.01 * (q as f32 - 20.0)).collect();
        let p0: Vec<f32> = (0..N).map(|q| 0.1 * (q % 5) as f32).collect();
        let mut a = OptimState::new(vec![0.0f32; state_len(OptimKind::Adam, N)]);
        let mut f = OptimState::new(vec![0.0f32; state_len(OptimKind::Factored, N)]);
        let (mut pa, mut pf) = (p0.clone(), p0);
        let wd = 1e-3;
        let adam = OptimConfig::new(Optimiser::adam(1e-2f32)).with_weight_decay(wd);
        let fac = OptimConfig::new(Optimiser::factored(1e-2f32)).with_weight_decay(wd);
        for _ in 0..3 {
            a.step(&adam, &mut pa, &g).unwrap();
            f.step(&fac, &mut pf, &g).unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pa), bits(&pf));
        assert_eq!(bits(a.storage()), bits(f.storage()));
    }

    #[test]
    fn blocks_equal_one_step_and_a_split_matrix_is_refused() {
        let g: Vec<f32> = full_rank_grads(1).iter().map(|&x| x as f32).collect();
        let p0: Vec<f32> = start().iter().map(|&x| x as f32).collect();
        let cfg = OptimConfig::new(Optimiser::factored(1e-2f32)).with_weight_decay(1e-3);
        let len = state_len_in(OptimKind::Factored, &SHAPE, FULL);
        let fresh = || OptimState::new(vec![0.0f32; len]);
        let (mut whole, mut parts) = (fresh(), fresh());
        let (mut pw, mut pp) = (p0.clone(), p0.clone());
        for _ in 0..3 {
            whole.step_in(&cfg, (&SHAPE, FULL), &mut pw, &g).unwrap();
            // The layer-wise update's blocks, top first: the decoder's output layer
            // (4x3 + 4), its hidden layer (3x2 + 3), the heads with the segmenter, the
            // encoder's layer (3x4 + 3).
            for (at, l) in [(43, 16), (34, 9), (15, 19), (0, 15)] {
                let (pb, gb) = (&mut pp[at..at + l], &g[at..at + l]);
                parts
                    .step_part_in(&cfg, (&SHAPE, FULL), pb, gb, at)
                    .unwrap();
            }
            parts.finish_parts();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pw), bits(&pp));
        assert_eq!(bits(whole.storage()), bits(parts.storage()));
        assert_eq!(whole.steps(), parts.steps());
        // A block ending inside the encoder's weight matrix (3x4 from 0).
        let (before, state) = (pp.clone(), parts.storage().clone());
        let r = parts.step_part_in(&cfg, (&SHAPE, FULL), &mut pp[0..6], &g[0..6], 0);
        assert_eq!(r, Err(OptimError::LengthMismatch));
        assert_eq!(bits(&pp), bits(&before));
        assert_eq!(bits(parts.storage()), bits(&state));
        // A wrong storage length.
        let mut short = OptimState::new(vec![0.0f32; len - 1]);
        assert_eq!(
            short.step_in(&cfg, (&SHAPE, FULL), &mut pp, &g),
            Err(OptimError::LengthMismatch)
        );
        // The factored state without the tensors: the wrong length (every value a
        // vector's).
        assert_eq!(
            parts.step(&cfg, &mut pp, &g),
            Err(OptimError::LengthMismatch)
        );
    }

    #[test]
    fn errors_leave_parameters_and_state_untouched() {
        let cfg = OptimConfig::new(Optimiser::factored(1e-2f32));
        let len = state_len_in(OptimKind::Factored, &SHAPE, FULL);
        let mut s = OptimState::new(vec![0.0f32; len]);
        let mut p: Vec<f32> = start().iter().map(|&x| x as f32).collect();
        let g: Vec<f32> = full_rank_grads(0).iter().map(|&x| x as f32).collect();
        s.step_in(&cfg, (&SHAPE, FULL), &mut p, &g).unwrap();
        let (p1, s1) = (p.clone(), s.storage().clone());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // A NaN in a matrix; a gradient whose square overflows in a matrix (the last
        // weight of the output layer) and in a vector (the last bias).
        for (q, x, want) in [
            (5, f32::NAN, OptimError::NonFiniteGradient),
            (54, 1e30, OptimError::NonFiniteUpdate),
            (58, 1e30, OptimError::NonFiniteUpdate),
        ] {
            let mut bad = g.clone();
            bad[q] = x;
            let r = s.step_in(&cfg, (&SHAPE, FULL), &mut p, &bad);
            assert_eq!(r, Err(want), "value {q}");
            assert_eq!(bits(&p), bits(&p1));
            assert_eq!(bits(s.storage()), bits(&s1));
            assert_eq!(s.steps(), 1);
        }
        // Every moment finite after good steps.
        for _ in 0..10 {
            s.step_in(&cfg, (&SHAPE, FULL), &mut p, &g).unwrap();
        }
        assert!(s.storage().iter().chain(&p).all(|x| x.is_finite()));
    }

    #[test]
    fn both_kinds_fit_a_target_matrix() {
        // Minimise 0.5 ||W - T||^2 over the whole parameter vector.
        let target: Vec<f32> = (0..N).map(|q| ((q * 5 % 7) as f32 - 3.0) * 0.2).collect();
        for opt in [
            Optimiser::factored(0.02f32),
            Optimiser::factored_rms(0.02f32),
        ] {
            let cfg = OptimConfig::new(opt);
            let len = state_len_in(opt.kind(), &SHAPE, FULL);
            let mut s = OptimState::new(vec![0.0f32; len]);
            let mut p = vec![0.0f32; N];
            let loss = |p: &[f32]| -> f32 {
                p.iter()
                    .zip(&target)
                    .map(|(a, b)| 0.5 * (a - b) * (a - b))
                    .sum()
            };
            let l0 = loss(&p);
            for _ in 0..600 {
                let g: Vec<f32> = p.iter().zip(&target).map(|(a, b)| a - b).collect();
                s.step_in(&cfg, (&SHAPE, FULL), &mut p, &g).unwrap();
            }
            assert!(
                loss(&p) < 1e-3 * l0,
                "{:?}: {} from {l0}",
                opt.kind(),
                loss(&p)
            );
        }
    }
}
