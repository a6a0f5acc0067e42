//! Finite-difference check of the hand-written backward pass, for every parameter
//! tensor, both posteriors, both likelihoods, both activations, unsupervised and
//! supervised cluster losses and all three update scopes.
//!
//! The check runs in f64 with central differences (step 1e-6, truncation error ~1e-12,
//! rounding ~1e-10): each tensor's gradient must match with relative error
//! `||g - g_fd|| / max(||g||, ||g_fd||, 1e-8) <= 1e-3` (the worst case is printed with
//! `--nocapture`; docs/benchmarks.md). The posterior draw comes from a fixed, smooth
//! noise model (below) so that the loss is a deterministic, differentiable function of
//! the parameters; the distribution-specific `dw/dkappa` of the real samplers is
//! checked against finite differences of their own transforms in the distribution
//! tests.

use hvae::dist::sphere::{Draw, SampleError};
use hvae::shape::{Activation, Likelihood, Posterior, Scope, Shape};
use hvae::train::loss::{
    loss_and_grad, Batch, ClusterInput, DrawSource, LossBuffers, LossConfig, LossError, LossParts,
};
use hvae::Model;

mod lcg;

use lcg::Lcg;

/// A fixed draw: `w = tanh(a + c ln kappa)`, tangent `v` fixed, `z = H(mu) (w, sqrt(1-w²) v)`
/// with the Householder reflection `H = I - 2 u uᵀ / (u.u)`, `u = e1 - mu` written here
/// independently of the crate's.
struct FixedDraws {
    noise: Vec<(f64, f64, Vec<f64>)>,
    next: usize,
}

impl FixedDraws {
    fn new(n: usize, m: usize, seed: u64) -> Self {
        let mut r = Lcg(seed);
        let noise = (0..n)
            .map(|_| {
                let mut v: Vec<f64> = (0..m - 1).map(|_| r.normal()).collect();
                let nv = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                v.iter_mut().for_each(|a| *a /= nv);
                (r.uniform() - 0.5, 0.3 + 0.4 * r.uniform(), v)
            })
            .collect();
        FixedDraws { noise, next: 0 }
    }
}

impl DrawSource<f64> for FixedDraws {
    fn draw(
        &mut self,
        _p: Posterior,
        mu: &[f64],
        kappa: f64,
        z: &mut [f64],
    ) -> Result<Draw<f64>, SampleError> {
        let (a, c, v) = &self.noise[self.next % self.noise.len()];
        self.next += 1;
        let w = (a + c * kappa.ln()).tanh();
        let dw_dkappa = (1.0 - w * w) * c / kappa;
        let m = mu.len();
        let r = (1.0 - w * w).max(0.0).sqrt();
        let x: Vec<f64> = (0..m)
            .map(|i| if i == 0 { w } else { r * v[i - 1] })
            .collect();
        let u: Vec<f64> = (0..m)
            .map(|i| if i == 0 { 1.0 - mu[0] } else { -mu[i] })
            .collect();
        let uu: f64 = u.iter().map(|a| a * a).sum();
        let ux: f64 = u.iter().zip(&x).map(|(a, b)| a * b).sum();
        for i in 0..m {
            z[i] = x[i] - 2.0 * u[i] * ux / uu;
        }
        Ok(Draw { w, dw_dkappa })
    }
}

/// `loss_and_grad` of `batch` on `model` for `scope`, in `store`, with the marginal
/// starting at `marginal`, the balance towards `shares` when given, and the fixed draws
/// of `draw_seed`: the loss parts, the gradient and the new marginal.
fn loss_in(
    model: &Model<f64, Vec<f64>>,
    batch: &Batch<'_, f64>,
    cfg: &LossConfig<f64>,
    scope: Scope,
    (marginal, shares): (&[f64], Option<&[f64]>),
    store: &mut [f64],
    draw_seed: u64,
) -> (LossParts<f64>, Vec<f64>, Vec<f64>) {
    let s = *model.shape();
    let b = batch.inputs.len() / s.input;
    let mut bufs = if needs_batch_kernels(cfg, shares) {
        LossBuffers::with_batch_kernels(&s, scope, b, store).unwrap()
    } else {
        LossBuffers::new(&s, scope, b, store).unwrap()
    };
    bufs.marginal_mut().copy_from_slice(marginal);
    if let Some(pi) = shares {
        bufs.set_balance_prior(pi).unwrap();
    }
    let mut draws = FixedDraws::new(b, s.latent, draw_seed);
    let parts = loss_and_grad(model, batch, cfg, &mut draws, &mut bufs).unwrap();
    (parts, bufs.grads().to_vec(), bufs.marginal().to_vec())
}

/// The neighbour contrast and the balance shares need the buffers of
/// `LossBuffers::with_batch_kernels`.
fn needs_batch_kernels(cfg: &LossConfig<f64>, shares: Option<&[f64]>) -> bool {
    cfg.contrast != 0.0 || shares.is_some()
}

/// Scalars of the buffers [`loss_in`] makes.
fn store_len(
    s: &Shape,
    scope: Scope,
    b: usize,
    cfg: &LossConfig<f64>,
    shares: Option<&[f64]>,
) -> usize {
    if needs_batch_kernels(cfg, shares) {
        LossBuffers::<f64>::storage_len_batch_kernels(s, scope, b)
    } else {
        LossBuffers::<f64>::storage_len(s, scope, b)
    }
}

/// A model of `s` with parameters drawn from `Lcg(seed)` and `b` input rows drawn
/// after them.
fn model_and_inputs(s: Shape, seed: u64, b: usize) -> (Model<f64, Vec<f64>>, Vec<f64>) {
    let mut r = Lcg(seed);
    let params: Vec<f64> = (0..s.param_len()).map(|_| 0.5 * r.normal()).collect();
    let inputs = (0..b * s.input).map(|_| r.uniform()).collect();
    (Model::new(s, params).unwrap(), inputs)
}

/// [`loss_in`] of `inputs` for `Scope::SegmenterOnly`, in new buffers, with the marginal
/// starting at `marginal` and the fixed draws of seed 1: the loss parts and the new
/// marginal.
fn segmenter_loss(
    model: &Model<f64, Vec<f64>>,
    inputs: &[f64],
    pairs: &[(u16, u16)],
    cfg: &LossConfig<f64>,
    marginal: &[f64],
) -> (LossParts<f64>, Vec<f64>) {
    let s = *model.shape();
    let b = inputs.len() / s.input;
    let batch = Batch {
        inputs,
        labels: &[],
        pairs,
    };
    let mut store = vec![0.0; LossBuffers::<f64>::storage_len(&s, Scope::SegmenterOnly, b)];
    let (parts, _, p_bar) = loss_in(
        model,
        &batch,
        cfg,
        Scope::SegmenterOnly,
        (marginal, None),
        &mut store,
        1,
    );
    (parts, p_bar)
}

struct Case {
    shape: Shape,
    scope: Scope,
    labels: Vec<Option<u8>>,
    cfg: LossConfig<f64>,
    /// Balance shares (`LossBuffers::set_balance_prior`), when set.
    shares: Option<Vec<f64>>,
}

fn run(case: &Case, seed: u64) -> f64 {
    let s = case.shape;
    let mut r = Lcg(seed);
    let mut params: Vec<f64> = (0..s.param_len()).map(|_| 0.4 * r.normal()).collect();
    // A non-trivial normalisation: offsets around 0.1, scales around 1.
    let no = s.norm_offset();
    for i in 0..s.input {
        params[no + i] = 0.1 * r.normal();
        params[no + s.input + i] = 0.8 + 0.4 * r.uniform();
    }
    let b = 5;
    let inputs: Vec<f64> = (0..b * s.input).map(|_| r.uniform()).collect();
    let pairs = [(0u16, 1u16), (2, 3), (4, 0), (1, 3)];
    let batch = Batch {
        inputs: &inputs,
        labels: &case.labels,
        pairs: &pairs,
    };
    let range = s.scope_range(case.scope);
    let p_bar0: Vec<f64> = (0..s.clusters).map(|_| 1.0 / s.clusters as f64).collect();

    let eval = |params: &[f64], grads: &mut [f64]| -> f64 {
        let model = Model::new(s, params.to_vec()).unwrap();
        let shares = case.shares.as_deref();
        let mut store = vec![0.0; store_len(&s, case.scope, b, &case.cfg, shares)];
        let (parts, g, _) = loss_in(
            &model,
            &batch,
            &case.cfg,
            case.scope,
            (&p_bar0, shares),
            &mut store,
            99,
        );
        grads.copy_from_slice(&g);
        parts.total
    };
    let mut grads = vec![0.0; range.len()];
    eval(&params, &mut grads);
    let mut scratch = vec![0.0; range.len()];
    let h = 1e-6;
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for t in s.tensors() {
        let mut num = Vec::new();
        let mut ana = Vec::new();
        for idx in t.range() {
            let saved = params[idx];
            params[idx] = saved + h;
            let lp = eval(&params, &mut scratch);
            params[idx] = saved - h;
            let lm = eval(&params, &mut scratch);
            params[idx] = saved;
            let fd = (lp - lm) / (2.0 * h);
            let g = if range.contains(&idx) {
                grads[idx - range.start]
            } else {
                0.0
            };
            if range.contains(&idx) {
                num.push(fd);
                ana.push(g);
            }
        }
        if num.is_empty() {
            continue;
        }
        let diff = num
            .iter()
            .zip(&ana)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let nn = num.iter().map(|a| a * a).sum::<f64>().sqrt();
        let na = ana.iter().map(|a| a * a).sum::<f64>().sqrt();
        let rel = diff / nn.max(na).max(1e-8);
        assert!(
            rel <= 1e-3,
            "{:?} {:?} {}: relative error {rel:e} (|g| {na:e}, |fd| {nn:e})",
            s.posterior,
            case.scope,
            t.id
        );
        worst = worst.max(rel);
        checked += 1;
    }
    assert!(checked > 0);
    worst
}

fn unsupervised() -> LossConfig<f64> {
    LossConfig {
        beta: 0.7,
        gamma: 1.5,
        eta: 2.0,
        entropy: 0.3,
        sigma: 0.8,
        balance_momentum: 0.6,
        balance_floor: 0.0,
        cluster_input: ClusterInput::Mean,
        density: 0.0,
        contrast: 0.0,
        temperature: 0.5,
        consistency: 1.0,
    }
}

#[test]
fn every_tensor_matches_finite_differences() {
    let base = Shape::new(6, &[5, 4], 3, 4);
    let mut seed = 1;
    let mut worst: f64 = 0.0;
    let mut cases = 0;
    for posterior in [Posterior::VonMisesFisher, Posterior::PowerSpherical] {
        for likelihood in [Likelihood::Gaussian, Likelihood::Bernoulli] {
            for activation in [Activation::Tanh, Activation::Relu] {
                let shape = base
                    .with_posterior(posterior)
                    .with_likelihood(likelihood)
                    .with_activation(activation);
                for scope in [
                    Scope::Full,
                    Scope::EncoderAndSegmenter,
                    Scope::SegmenterOnly,
                ] {
                    let supervised = LossConfig {
                        eta: 0.0,
                        entropy: 0.0,
                        balance_momentum: 0.0,
                        ..unsupervised()
                    };
                    let variants = [
                        // Unsupervised: pairs + entropy + balance.
                        (vec![], unsupervised(), None),
                        // The balance towards unequal shares and a weaker consistency
                        // term, with a label on some rows (a model trained towards a
                        // mixture's partition).
                        (
                            vec![Some(2), None, Some(0), Some(3), None],
                            LossConfig {
                                consistency: 0.4,
                                ..unsupervised()
                            },
                            Some(vec![0.5, 0.1, 0.15, 0.25]),
                        ),
                        // The balance as a floor: at a floor of 1 (a share of 1 / K)
                        // the hinge is active on at least one cluster.
                        (
                            vec![],
                            LossConfig {
                                balance_floor: 1.0,
                                ..unsupervised()
                            },
                            None,
                        ),
                        // The density term (the segmenter as a vMF mixture) on top of
                        // the unsupervised terms.
                        (
                            vec![],
                            LossConfig {
                                density: 0.7,
                                ..unsupervised()
                            },
                            None,
                        ),
                        // The neighbour contrast on the mean directions (its pairs
                        // share rows: row 0, 1 and 3 are in two pairs each).
                        (
                            vec![],
                            LossConfig {
                                contrast: 0.8,
                                temperature: 0.3,
                                ..unsupervised()
                            },
                            None,
                        ),
                        // Mixed: some rows labelled, cluster terms still on.
                        (
                            vec![Some(2), None, Some(0), Some(3), None],
                            unsupervised(),
                            None,
                        ),
                        // Supervised only.
                        (
                            vec![Some(1), Some(1), Some(0), Some(3), Some(2)],
                            supervised,
                            None,
                        ),
                    ];
                    for (labels, cfg, shares) in variants {
                        for cluster_input in [ClusterInput::Mean, ClusterInput::Draw] {
                            let cfg = LossConfig {
                                cluster_input,
                                ..cfg
                            };
                            let labels = labels.clone();
                            worst = worst.max(run(
                                &Case {
                                    shape,
                                    scope,
                                    labels,
                                    cfg,
                                    shares: shares.clone(),
                                },
                                seed,
                            ));
                            seed += 1;
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!("worst relative error over {cases} cases: {worst:e}");
}

#[test]
fn one_hidden_layer_latent_two() {
    // The smallest sphere (M = 2) and a single hidden layer.
    let shape = Shape::new(4, &[3], 2, 3).with_posterior(Posterior::PowerSpherical);
    run(
        &Case {
            shape,
            scope: Scope::Full,
            labels: vec![],
            cfg: unsupervised(),
            shares: None,
        },
        7,
    );
}

#[test]
fn marginal_is_the_moving_average_of_the_batch() {
    // With SegmenterOnly the segmenter sees mu(x), so p_i is exactly `segment(x).probs`
    // and the returned marginal must be rho p_bar + (1 - rho) mean_i p_i.
    let s = Shape::new(6, &[5], 3, 4);
    let b = 7;
    let (model, inputs) = model_and_inputs(s, 3, b);
    let cfg = LossConfig {
        balance_momentum: 0.75,
        ..unsupervised()
    };
    let prev = [0.1, 0.2, 0.3, 0.4];
    // The loss parts and the new marginal, from `prev`.
    let run = |cfg: &LossConfig<f64>| segmenter_loss(&model, &inputs, &[(0, 1)], cfg, &prev);
    let (parts, p_bar) = run(&cfg);
    let mut work = vec![0.0; s.work_len()];
    let mut mean = [0.0; 4];
    for x in inputs.chunks(s.input) {
        let seg = model.segment(x, &mut work).unwrap();
        for (m, p) in mean.iter_mut().zip(seg.probs) {
            *m += p / b as f64;
        }
    }
    let mut h = 0.0;
    for q in 0..4 {
        let want = 0.75 * prev[q] + 0.25 * mean[q];
        assert!(
            (p_bar[q] - want).abs() < 1e-12,
            "{q}: {} vs {want}",
            p_bar[q]
        );
        h -= want * f64::ln(want);
    }
    assert!((parts.balance - h).abs() < 1e-12);
    assert!((p_bar.iter().sum::<f64>() - 1.0).abs() < 1e-12);

    // With a balance floor the same marginal gives minus the hinge below `f / K`.
    let floored = LossConfig {
        balance_floor: 0.8,
        ..cfg
    };
    let (parts, p_bar) = run(&floored);
    let hinge: f64 = p_bar
        .iter()
        .map(|&v| (f64::ln(0.8 / 4.0) - v.ln()).max(0.0))
        .sum();
    assert!(hinge > 0.0, "{p_bar:?}");
    assert!((parts.balance + hinge).abs() < 1e-12);
}

#[test]
fn balance_towards_shares_is_minus_the_divergence() {
    // With balance shares set, the balance reward is -KL(p_bar || pi) of the new
    // marginal, pi normalised; and the consistency weight scales that term alone.
    let s = Shape::new(6, &[5], 3, 4);
    let b = 6;
    let (model, inputs) = model_and_inputs(s, 5, b);
    let pairs = [(0u16, 1u16), (2, 3), (4, 5)];
    let batch = Batch {
        inputs: &inputs,
        labels: &[],
        pairs: &pairs,
    };
    let cfg = LossConfig {
        balance_momentum: 0.5,
        ..unsupervised()
    };
    let prev = [0.4, 0.3, 0.2, 0.1];
    // Unnormalised on purpose: the buffers keep pi / sum(pi).
    let shares = [1.0, 0.5, 2.0, 0.5];
    let run = |cfg: &LossConfig<f64>, shares: Option<&[f64]>| {
        let mut store = vec![0.0; store_len(&s, Scope::Full, b, cfg, shares)];
        loss_in(
            &model,
            &batch,
            cfg,
            Scope::Full,
            (&prev, shares),
            &mut store,
            2,
        )
    };
    let (parts, _, p_bar) = run(&cfg, Some(&shares));
    let kl: f64 = p_bar
        .iter()
        .zip(&shares)
        .map(|(&v, &w)| v * (v / (w / 4.0)).ln())
        .sum();
    assert!(kl > 0.01, "{p_bar:?}");
    assert!(
        (parts.balance + kl).abs() < 1e-12,
        "{} vs {}",
        parts.balance,
        -kl
    );
    // Without shares, the same marginal's entropy (the balance as it was).
    let (plain, _, p_plain) = run(&cfg, None);
    assert_eq!(p_plain, p_bar);
    let h: f64 = -p_bar.iter().map(|&v| v * v.ln()).sum::<f64>();
    assert!((plain.balance - h).abs() < 1e-12);
    // omega = 0.25: the total loses gamma (1 - omega) consistency, nothing else moves.
    let weak = LossConfig {
        consistency: 0.25,
        ..cfg
    };
    let (w, _, _) = run(&weak, None);
    assert_eq!(w.consistency, plain.consistency);
    let want = plain.total - cfg.gamma * 0.75 * plain.consistency;
    assert!((w.total - want).abs() < 1e-12, "{} vs {want}", w.total);
}

#[test]
fn balance_shares_are_checked_and_need_room() {
    let s = Shape::new(6, &[5], 3, 4);
    // A device's buffers have no room for them.
    let mut store = vec![0.0; LossBuffers::<f64>::storage_len(&s, Scope::Full, 4)];
    let mut bufs = LossBuffers::new(&s, Scope::Full, 4, &mut store).unwrap();
    assert_eq!(
        bufs.set_balance_prior(&[0.25; 4]),
        Err(LossError::BufferLength)
    );
    assert_eq!(bufs.balance_prior(), None);
    let mut store = vec![0.0; LossBuffers::<f64>::storage_len_batch_kernels(&s, Scope::Full, 4)];
    let mut bufs = LossBuffers::with_batch_kernels(&s, Scope::Full, 4, &mut store).unwrap();
    assert_eq!(
        bufs.set_balance_prior(&[0.5; 3]),
        Err(LossError::BufferLength)
    );
    for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert_eq!(
            bufs.set_balance_prior(&[0.3, bad, 0.3, 0.3]),
            Err(LossError::BadShares)
        );
    }
    assert_eq!(bufs.balance_prior(), None);
    bufs.set_balance_prior(&[2.0, 1.0, 1.0, 4.0]).unwrap();
    assert_eq!(bufs.balance_prior(), Some(&[0.25, 0.125, 0.125, 0.5][..]));
    // A bad call after a good one leaves the shares set as they were.
    assert_eq!(
        bufs.set_balance_prior(&[1.0, 0.0, 1.0, 1.0]),
        Err(LossError::BadShares)
    );
    assert_eq!(bufs.balance_prior(), Some(&[0.25, 0.125, 0.125, 0.5][..]));
}

#[test]
fn a_dirty_cache_gives_the_same_loss_and_gradient() {
    // The trainer reuses its cache from step to step: nothing left there by an earlier
    // call may leak into the next gradient (the cluster terms accumulate into it).
    let s = Shape::new(6, &[5], 3, 4);
    let b = 6;
    let (model, inputs) = model_and_inputs(s, 11, b);
    let batch = Batch {
        inputs: &inputs,
        labels: &[],
        pairs: &[(0, 1), (2, 3), (4, 5)],
    };
    let cfg = unsupervised();
    for scope in [Scope::Full, Scope::SegmenterOnly] {
        // Everything but the marginal is scratch: workspace, cache and gradient.
        let run_with = |store: &mut Vec<f64>| {
            let (parts, grads, p_bar) =
                loss_in(&model, &batch, &cfg, scope, (&[0.25; 4], None), store, 1);
            (parts.total, grads, p_bar)
        };
        let len = LossBuffers::<f64>::storage_len(&s, scope, b);
        let mut clean = vec![0.0; len];
        let want = run_with(&mut clean);
        let mut dirty = vec![1.0e3; len];
        assert_eq!(
            run_with(&mut dirty),
            want,
            "{scope:?}: stale cache changed the result"
        );
        // And the cache as a first call leaves it.
        assert_eq!(run_with(&mut clean), want, "{scope:?}: second call differs");
    }
}

#[test]
fn density_is_the_mixture_negative_log_likelihood() {
    // On S^2 (M = 3) the vMF normaliser is C_3(kappa) = kappa / (4 pi sinh kappa): the
    // density part must be mean_i[-ln sum_c pi_c C_3(kappa) e^{kappa ĉ_c . mu_i}] with
    // pi = softmax(log-weights), computed here from the parameters alone.
    let s = Shape::new(6, &[5], 3, 4);
    let b = 5;
    let (model, inputs) = model_and_inputs(s, 21, b);
    let cfg = LossConfig {
        density: 0.5,
        ..unsupervised()
    };
    let loss =
        |cfg: &LossConfig<f64>| segmenter_loss(&model, &inputs, &[(0, 1)], cfg, &[0.25; 4]).0;
    let parts = loss(&cfg);
    let seg = model.segmenter_params();
    let (m, k) = (3, 4);
    let kappa = seg[k * m].exp();
    let lw = &seg[k * m + 1..];
    let zw: f64 = lw.iter().map(|w| w.exp()).sum();
    let c3 = kappa / (4.0 * std::f64::consts::PI * kappa.sinh());
    let mut work = vec![0.0; s.work_len()];
    let mut want = 0.0;
    for x in inputs.chunks(s.input) {
        let mu = model.encode(x, &mut work).unwrap().mu.to_vec();
        let f: f64 = (0..k)
            .map(|c| {
                let ck = &seg[c * m..(c + 1) * m];
                let n = ck.iter().map(|v| v * v).sum::<f64>().sqrt();
                let cos = ck.iter().zip(&mu).map(|(a, b)| a * b).sum::<f64>() / n;
                lw[c].exp() / zw * c3 * (kappa * cos).exp()
            })
            .sum();
        want -= f.ln() / b as f64;
    }
    assert!(
        (parts.density - want).abs() < 1e-10 * (1.0 + want.abs()),
        "{} vs {want}",
        parts.density
    );
    // And it enters the total as gamma delta density.
    let without = LossConfig {
        density: 0.0,
        ..unsupervised()
    };
    let base = loss(&without);
    assert_eq!(base.density, 0.0);
    let added = parts.total - base.total;
    assert!((added - 1.5 * 0.5 * want).abs() < 1e-10, "{added}");
}

#[test]
fn contrast_is_infonce_over_the_pairs_both_ways() {
    // mean over the pairs, each taken both ways (a, b), of
    // -ln[exp(u_a . u_b / tau) / sum_(k != a) exp(u_a . u_k / tau)], from the mean
    // directions alone; the term enters the total as zeta contrast, gamma aside, and
    // buffers without room for it are refused.
    let s = Shape::new(6, &[5], 3, 4);
    let b = 6;
    let (model, inputs) = model_and_inputs(s, 23, b);
    let pairs = [(0u16, 1u16), (2, 3), (4, 0)];
    let batch = Batch {
        inputs: &inputs,
        labels: &[],
        pairs: &pairs,
    };
    let tau = 0.4;
    let cfg = LossConfig {
        contrast: 0.6,
        temperature: tau,
        ..unsupervised()
    };
    let mut work = vec![0.0; s.work_len()];
    let u: Vec<Vec<f64>> = inputs
        .chunks(s.input)
        .map(|x| model.encode(x, &mut work).unwrap().mu.to_vec())
        .collect();
    let cos = |a: usize, k: usize| u[a].iter().zip(&u[k]).map(|(x, y)| x * y).sum::<f64>();
    let mut want = 0.0;
    for &(i, j) in &pairs {
        for (a, p) in [(i as usize, j as usize), (j as usize, i as usize)] {
            let z: f64 = (0..b)
                .filter(|&k| k != a)
                .map(|k| (cos(a, k) / tau).exp())
                .sum();
            want += -(cos(a, p) / tau) + z.ln();
        }
    }
    want /= 2.0 * pairs.len() as f64;
    let p_bar = [0.25; 4];
    let len = LossBuffers::<f64>::storage_len_batch_kernels(&s, Scope::Full, b);
    let (parts, _, _) = loss_in(
        &model,
        &batch,
        &cfg,
        Scope::Full,
        (&p_bar, None),
        &mut vec![0.0; len],
        3,
    );
    assert!(
        (parts.contrast - want).abs() < 1e-12 * (1.0 + want.abs()),
        "{} vs {want}",
        parts.contrast
    );
    let off = LossConfig {
        contrast: 0.0,
        ..cfg
    };
    let plain = LossBuffers::<f64>::storage_len(&s, Scope::Full, b);
    let (base, _, _) = loss_in(
        &model,
        &batch,
        &off,
        Scope::Full,
        (&p_bar, None),
        &mut vec![0.0; plain],
        3,
    );
    assert_eq!(base.contrast, 0.0);
    assert!((parts.total - base.total - 0.6 * want).abs() < 1e-10);
    // The plain buffers keep no mean directions: a typed error, not a silent zero.
    let mut store = vec![0.0; plain];
    let mut bufs = LossBuffers::new(&s, Scope::Full, b, &mut store).unwrap();
    let mut draws = FixedDraws::new(b, s.latent, 3);
    assert_eq!(
        loss_and_grad(&model, &batch, &cfg, &mut draws, &mut bufs).unwrap_err(),
        hvae::train::loss::LossError::BufferLength
    );
}

#[test]
fn batch_kernels_give_the_same_bits() {
    // `LossBuffers::with_batch_kernels`: the forward passes read every dense layer's
    // weights transposed (`dense_forward_t`), the parameter gradients are summed over
    // the batch's recorded rows (`dense_grads_rows`) and the backward sweep reads each
    // row's encoder outputs kept by the first (`encoded_len`); the loss, the gradient and the
    // marginal must be the bits of the plain buffers', in f32 with the real samplers,
    // for layer widths on and off the kernels' blocks of sixteen, two hidden layers,
    // both posteriors, likelihoods and activations, every scope, and buffers for more
    // rows than the batch has, used twice.
    use hvae::train::loss::RandomDraws;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;
    let shapes = [
        Shape::new(64, &[32], 16, 10).with_posterior(Posterior::PowerSpherical),
        Shape::new(13, &[21, 17], 5, 3)
            .with_activation(Activation::Tanh)
            .with_likelihood(Likelihood::Bernoulli),
        Shape::new(40, &[48], 33, 4),
    ];
    let mut compared = 0;
    for (n, s) in shapes.into_iter().enumerate() {
        let mut r = Lcg(40 + n as u64);
        let params: Vec<f32> = (0..s.param_len())
            .map(|_| 0.3 * r.normal() as f32)
            .collect();
        let model = Model::new(s, params).unwrap();
        let b = 12;
        let inputs: Vec<f32> = (0..b * s.input).map(|_| r.uniform() as f32).collect();
        let pairs: Vec<(u16, u16)> = (0..b as u16 / 2).map(|i| (i, i + b as u16 / 2)).collect();
        let batch = Batch {
            inputs: &inputs,
            labels: &[],
            pairs: &pairs,
        };
        let cfg = LossConfig::<f32> {
            gamma: 6.0,
            ..LossConfig::default()
        };
        for scope in [
            Scope::Full,
            Scope::EncoderAndSegmenter,
            Scope::SegmenterOnly,
        ] {
            let run = |batched: bool| {
                let (mut store, mut bufs);
                let rows = b + 3;
                if batched {
                    let len = LossBuffers::<f32>::storage_len_batch_kernels(&s, scope, rows);
                    store = vec![f32::NAN; len];
                    bufs = LossBuffers::with_batch_kernels(&s, scope, rows, &mut store).unwrap();
                } else {
                    store = vec![f32::NAN; LossBuffers::<f32>::storage_len(&s, scope, rows)];
                    bufs = LossBuffers::new(&s, scope, rows, &mut store).unwrap();
                }
                let mut parts = LossParts::default();
                for _ in 0..2 {
                    bufs.marginal_mut().fill(0.2);
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
                    let mut draws = RandomDraws(&mut rng);
                    parts = loss_and_grad(&model, &batch, &cfg, &mut draws, &mut bufs).unwrap();
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (
                    bits(&[parts.total, parts.recon, parts.kl, parts.consistency]),
                    bits(bufs.grads()),
                    bits(bufs.marginal()),
                )
            };
            let plain = run(false);
            assert!(
                plain.1.iter().any(|&g| g != 0),
                "{s:?} {scope:?}: a zero gradient"
            );
            assert_eq!(run(true), plain, "{s:?} {scope:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
}
