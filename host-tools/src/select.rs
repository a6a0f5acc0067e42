//! Choosing among trained models without labels: restarts and the number of clusters.
//!
//! [`fit_restarts`] trains `R` models from derived seeds and keeps the one a
//! label-free criterion ranks best. The criteria ([`Criteria`]) are computed from a
//! model's answers on its training rows:
//!
//! - **silhouette**: the mean silhouette of the labels on the mean directions `mu(x)`
//!   with the cosine distance `1 - cos` (Rousseeuw 1987): how much closer each row is to
//!   its own cluster than to the nearest other one, in `[-1, 1]`;
//! - **agreement**: the labels' agreement with the neighbourhoods of the normalised
//!   inputs (the fraction of each row's nearest neighbours that share its label),
//!   times the normalised entropy of the cluster sizes (so that one big cluster,
//!   which every neighbourhood agrees with, does not win);
//! - **consensus**: the mean NMI of a restart's labels with every other restart's (the
//!   medoid of the restarts; with fewer than 3 restarts the silhouette decides);
//! - **association**: the labels' [`normalised_association`] with the Euclidean
//!   neighbour graph of the normalised inputs that the GMM candidate's choice scores
//!   on ([`FitConfig::choice_neighbours`] neighbours each; `hvae train --select`'s
//!   default).
//!
//! `hvae train --clusters auto` ([`crate::commands::train::train_on`]) picks `K` by the
//! silhouette of models trained with `K = 2 ..= max`.
//!
//! [`fit_with_gmm_candidate`] trains the model as configured beside a candidate that
//! follows a Gaussian mixture of the inputs, and keeps the one whose partition scores
//! higher against the inputs' nearest neighbours ([`normalised_association`] by
//! default, [`neighbour_agreement`] on request: [`ChoiceScore`]).

use crate::metrics;
use crate::train::{
    cosines_with_others, fit_branches, mine_neighbours, neighbours_per_row, normalise_rows, Branch,
    ChoiceScore, EarlyChoice, EpochStats, FitConfig, FitError, FitJob,
};
use hvae::infer::model::{Model, VecModel};
use serde::{Deserialize, Serialize};

/// The label-free criterion that picks a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Silhouette of the labels on the mean directions (cosine distance).
    Silhouette,
    /// Agreement with the input neighbourhoods times the balance of the clusters.
    Agreement,
    /// Mean NMI with the other restarts.
    Consensus,
    /// Normalised association with the neighbour graph of the normalised inputs.
    Association,
}

impl Criterion {
    /// Every criterion, in the order reports list them.
    pub const ALL: [Criterion; 4] = [
        Criterion::Silhouette,
        Criterion::Agreement,
        Criterion::Consensus,
        Criterion::Association,
    ];

    /// The criterion that picks among `restarts` restarts when `self` is asked for:
    /// itself, but the silhouette for consensus with fewer than three (two restarts'
    /// mean NMI with each other is the same number).
    pub fn used_with(self, restarts: usize) -> Criterion {
        if self == Criterion::Consensus && restarts < 3 {
            Criterion::Silhouette
        } else {
            self
        }
    }

    /// Its name as `hvae train --select` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Silhouette => "silhouette",
            Criterion::Agreement => "agreement",
            Criterion::Consensus => "consensus",
            Criterion::Association => "association",
        }
    }
}

/// The criteria of one trained model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// See [`Criterion::Silhouette`].
    pub silhouette: f64,
    /// See [`Criterion::Agreement`].
    pub agreement: f64,
    /// See [`Criterion::Consensus`] (0 until the restarts are compared).
    pub consensus: f64,
    /// See [`Criterion::Association`] (0 in files written before it was recorded).
    #[serde(default)]
    pub association: f64,
}

impl Criteria {
    /// The value of `c`.
    pub fn get(&self, c: Criterion) -> f64 {
        match c {
            Criterion::Silhouette => self.silhouette,
            Criterion::Agreement => self.agreement,
            Criterion::Consensus => self.consensus,
            Criterion::Association => self.association,
        }
    }
}

/// One restart: its seed, its criteria and its labels on the training rows.
#[derive(Clone, Debug)]
pub struct Restart {
    /// Seed it was trained with.
    pub seed: u64,
    /// Label-free criteria.
    pub criteria: Criteria,
    /// True for the restart the criterion picked.
    pub kept: bool,
    /// Label of every training row.
    pub labels: Vec<usize>,
}

/// The index of the largest of `values` (in `f64::total_cmp`'s order), the first of
/// equals: the restart a criterion picks. `None` when there are none.
pub fn first_best(values: impl IntoIterator<Item = f64>) -> Option<usize> {
    values
        .into_iter()
        .enumerate()
        .reduce(|a, b| if b.1.total_cmp(&a.1).is_gt() { b } else { a })
        .map(|(i, _)| i)
}

/// The seed of restart `r` of a run seeded `seed` (restart 0 is `seed` itself, so one
/// restart is the plain run).
pub fn restart_seed(seed: u64, r: usize) -> u64 {
    seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Labels and mean directions of every row (`n`, `n x M`).
pub fn answers(
    model: &Model<f32, Vec<f32>>,
    x: &[f32],
) -> Result<(Vec<usize>, Vec<f32>), FitError> {
    let shape = *model.shape();
    let mut work = vec![0f32; shape.work_len()];
    let n = x.len() / shape.input;
    let mut labels = Vec::with_capacity(n);
    let mut mus = Vec::with_capacity(n * shape.latent);
    for row in x.chunks_exact(shape.input) {
        let s = model.segment(row, &mut work)?;
        labels.push(s.label);
        mus.extend_from_slice(s.mu);
    }
    Ok((labels, mus))
}

/// Mean silhouette of `labels` on the unit rows `mus` (`n x m`), cosine distance.
/// A row alone in its cluster scores 0; with fewer than two clusters in use, -1.
pub fn silhouette(mus: &[f32], m: usize, labels: &[usize], k: usize) -> f64 {
    let n = labels.len();
    let mut sizes = vec![0usize; k];
    for &l in labels {
        sizes[l] += 1;
    }
    if sizes.iter().filter(|&&s| s > 0).count() < 2 {
        return -1.0;
    }
    let mut sum_to = vec![0f64; k];
    let mut total = 0.0;
    for i in 0..n {
        sum_to.fill(0.0);
        for (j, c) in cosines_with_others(&mus[..n * m], m, i) {
            sum_to[labels[j]] += 1.0 - f64::from(c);
        }
        let own = labels[i];
        if sizes[own] <= 1 {
            continue;
        }
        let a = sum_to[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sum_to[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let s = if a.max(b) > 0.0 {
            (b - a) / a.max(b)
        } else {
            0.0
        };
        total += s;
    }
    total / n as f64
}

/// The share of the neighbour lists' pairs (`n x nn`) that `labels` put in the same
/// cluster.
pub fn neighbour_agreement(labels: &[usize], neighbours: &[u32]) -> f64 {
    let n = labels.len();
    let nn = neighbours.len() / n.max(1);
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            neighbours[i * nn..(i + 1) * nn]
                .iter()
                .filter(|&&j| labels[j as usize] == l)
                .count()
        })
        .sum::<usize>() as f64
        / (n * nn).max(1) as f64
}

/// The normalised association of `labels` with the neighbour lists (`n x nn`): for
/// each of the `k` clusters, the share of its rows' neighbour pairs whose neighbour is
/// in it too, averaged over the clusters (an empty cluster counts 0). On the
/// neighbour graph this is `1 - Ncut / k`, the objective of normalised-cut spectral
/// clustering: a cluster's border counts against it in proportion to the cluster's
/// size, so, unlike [`neighbour_agreement`], a partition does not gain by letting its
/// large clusters grow into the small ones. Rows labelled `k` or more belong to no
/// cluster: their pairs count nowhere.
pub fn normalised_association(labels: &[usize], neighbours: &[u32], k: usize) -> f64 {
    let n = labels.len();
    let nn = neighbours.len() / n.max(1);
    // Per cluster: its rows, and their neighbour pairs that stay in it.
    let mut counts = vec![(0usize, 0usize); k];
    for (&l, list) in labels.iter().zip(neighbours.chunks_exact(nn.max(1))) {
        if let Some((rows, within)) = counts.get_mut(l) {
            *rows += 1;
            *within += list
                .iter()
                .filter(|&&j| labels.get(j as usize) == Some(&l))
                .count();
        }
    }
    counts
        .iter()
        .filter(|&&(rows, _)| rows > 0)
        .map(|&(rows, within)| within as f64 / (rows * nn) as f64)
        .sum::<f64>()
        / k.max(1) as f64
}

/// The `k` nearest neighbours of every row of `x` (`d` columns) by Euclidean
/// distance (excluding itself; ties to the smaller row index), `n x k` row indices,
/// nearest first. Exact: `n^2 d` multiply-adds.
pub fn euclidean_neighbours(x: &[f32], d: usize, k: usize) -> Vec<u32> {
    let n = x.len() / d.max(1);
    let k = neighbours_per_row(k, n);
    // The rows transposed (`d x n`): the distances of one row to every other are summed
    // side by side, each still in feature order from the value an empty `f32` sum
    // starts at (the bits of `Iterator::sum` over the squares).
    let xt = crate::train::transposed(x, d.max(1));
    let start: f32 = std::iter::empty::<f32>().sum();
    let mut out = Vec::with_capacity(n * k);
    let mut dist = vec![0f32; n];
    let mut keys: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        dist.fill(start);
        for col in xt.chunks_exact(n.max(1)) {
            let xi = col[i];
            for (e, &v) in dist.iter_mut().zip(col) {
                *e += (xi - v) * (xi - v);
            }
        }
        // Nearest first (total order), ties to the smaller index: one key each.
        keys.clear();
        keys.extend(
            dist.iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, &e)| (u64::from(crate::train::total_order(e)) << 32) | j as u64),
        );
        if keys.len() > k {
            keys.select_nth_unstable(k);
            keys.truncate(k);
        }
        keys.sort_unstable();
        out.extend(keys.iter().map(|&key| key as u32));
    }
    out
}

/// Which model [`fit_with_gmm_candidate`] kept, and the criterion of each.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GmmChoice {
    /// True when the mixture-trained candidate was kept.
    pub gmm_kept: bool,
    /// The agreement with the neighbours ([`FitConfig::choice_score`]) of the model
    /// trained as configured.
    pub agreement_plain: f64,
    /// The same for the mixture-trained candidate.
    pub agreement_gmm: f64,
    /// Where the choice was made, as a share of the joint phase: one of
    /// [`FitConfig::choice_looks`] (the agreements are the two models' there, and the
    /// model not kept was trained no further), or 1 when both were trained to the end.
    pub at: f32,
}

impl GmmChoice {
    /// True when the choice was made before the end of the joint phase.
    pub fn early(&self) -> bool {
        self.at < 1.0
    }
}

/// What [`fit_restarts`] and [`fit_with_gmm_candidate`] train and how they pick a
/// restart.
#[derive(Clone, Copy, Debug)]
pub struct Restarts<'a> {
    /// What each restart trains on (its configuration's seed seeds the first restart).
    pub fit: FitJob<'a>,
    /// Models trained from derived seeds ([`restart_seed`]; 0 counts as 1).
    pub restarts: usize,
    /// What picks among them.
    pub criterion: Criterion,
}

/// Trains the model `cfg` asks for ([`fit_restarts`]) and a candidate whose clusters
/// start from a diagonal Gaussian mixture of the normalised inputs and are trained
/// towards its partition ([`crate::train::CentreInit::Gmm`] with `gmm_targets`), and
/// keeps the one whose partition agrees more with the inputs' nearest neighbours
/// (Euclidean, on the normalised features; scored by [`FitConfig::choice_score`]:
/// [`normalised_association`] by default; at the end the model as configured must
/// lead by [`FitConfig::choice_lead`]). The two share their
/// warm-up ([`fit_branches`]): each is bit for bit the model trained alone, for the
/// cost of one warm-up and two joint phases (the candidate's
/// [`FitConfig::gmm_joint_share`] of the configured one). With one
/// restart the choice is made at the first of [`FitConfig::choice_looks`] where one
/// model's agreement leads the other's by that look's margin, and only
/// the model kept trains on: it is the same model, bit for bit, and the cost is one
/// warm-up, one joint phase and two short ones; otherwise both train to the end.
/// With restarts, each restart's seed gives one model of each kind and each kind
/// picks its restart by `criterion` first. `progress` sees every restart's warm-up
/// and both its models' epochs ([`EpochStats::restart`], and [`EpochStats::branch`]: 0
/// the model as configured, 1 the candidate; [`GmmChoice::gmm_kept`] says which one was
/// kept, [`GmmFit::restarts`] and [`GmmFit::other_restart`] which restart of each).
pub fn fit_with_gmm_candidate(
    job: Restarts<'_>,
    progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
) -> Result<GmmFit, FitError> {
    let Restarts {
        fit: FitJob { shape, x, cfg, .. },
        restarts,
        ..
    } = job;
    let d = shape.input;
    let neighbours = euclidean_neighbours(&normalise_rows(x, d)?, d, cfg.choice_neighbours);
    let score_of = |m: &VecModel<f32>| -> Result<f64, FitError> {
        let labels = answers(m, x)?.0;
        Ok(match cfg.choice_score {
            ChoiceScore::Association => {
                normalised_association(&labels, &neighbours, shape.clusters)
            }
            ChoiceScore::Agreement => neighbour_agreement(&labels, &neighbours),
        })
    };
    let branches = [
        Branch::of(cfg),
        Branch {
            init: crate::train::CentreInit::Gmm,
            gmm_targets: true,
            joint_share: cfg.gmm_joint_share,
        },
    ];
    // With one restart the choice may be made at one of the looks, when one model
    // leads by the look's margin there; the other stops.
    let looks = &cfg.choice_looks;
    let shares: Vec<f32> = looks.iter().map(|l| l.at).collect();
    let mut at_pause = None;
    let mut decide = |look: usize, models: &[VecModel<f32>]| -> Result<Option<usize>, FitError> {
        let ([plain, gmm], Some(l)) = (models, looks.get(look)) else {
            return Ok(None);
        };
        let (p, g) = (score_of(plain)?, score_of(gmm)?);
        at_pause = Some((p, g, l.at));
        Ok(((g - p).abs() >= l.margin).then_some(usize::from(g > p)))
    };
    let early = (restarts <= 1).then_some(EarlyChoice {
        at: &shares,
        decide: &mut decide,
    });
    let (mut kinds, kept_early) = train_restarts(job, &branches, early, progress)?;
    let gmm = choose(job, kinds.pop().unwrap_or_default())?;
    let plain = choose(job, kinds.pop().unwrap_or_default())?;
    let choice = match (kept_early, at_pause) {
        (Some(k), Some((agreement_plain, agreement_gmm, at))) => GmmChoice {
            gmm_kept: k == 1,
            agreement_plain,
            agreement_gmm,
            at,
        },
        _ => {
            let (agreement_plain, agreement_gmm) = (score_of(&plain.0)?, score_of(&gmm.0)?);
            GmmChoice {
                gmm_kept: agreement_plain - agreement_gmm < cfg.choice_lead,
                agreement_plain,
                agreement_gmm,
                at: 1.0,
            }
        }
    };
    let ((model, restarts), (other, other_runs)) = if choice.gmm_kept {
        (gmm, plain)
    } else {
        (plain, gmm)
    };
    Ok(GmmFit {
        model,
        restarts,
        choice,
        other,
        other_restart: kept_restart(&other_runs),
    })
}

/// What [`fit_with_gmm_candidate`] returns.
pub struct GmmFit {
    /// The model kept.
    pub model: VecModel<f32>,
    /// The kept kind's restarts with their criteria (empty with one restart).
    pub restarts: Vec<Restart>,
    /// Which kind was kept and the criterion of each.
    pub choice: GmmChoice,
    /// The model not kept (to judge the choice, as `hvae suite` does), as far as it was
    /// trained ([`GmmChoice::at`]).
    pub other: VecModel<f32>,
    /// The restart [`GmmFit::other`] comes from (its kind's pick: [`kept_restart`]).
    pub other_restart: usize,
}

/// The index of the restart kept among `runs` ([`Restart::kept`]); 0 when there was
/// only one (no runs: nothing was chosen).
pub fn kept_restart(runs: &[Restart]) -> usize {
    runs.iter().position(|r| r.kept).unwrap_or(0)
}

/// Agreement of `labels` with the neighbour lists (`n x nn`), times the normalised
/// entropy of the cluster sizes.
pub fn agreement(labels: &[usize], neighbours: &[u32], k: usize) -> f64 {
    let n = labels.len();
    let same = neighbour_agreement(labels, neighbours);
    let mut sizes = vec![0f64; k];
    for &l in labels {
        sizes[l] += 1.0;
    }
    let h: f64 = sizes
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / n as f64;
            -p * p.ln()
        })
        .sum();
    let balance = if k > 1 { h / (k as f64).ln() } else { 1.0 };
    same * balance
}

/// Trains `restarts` models (seeds [`restart_seed`]) and returns the one `criterion`
/// ranks best, with every restart's criteria (none with one restart: nothing is
/// chosen). `progress` sees every restart's epochs ([`EpochStats::restart`]; the
/// kept one is [`Restart::kept`]).
pub fn fit_restarts(
    job: Restarts<'_>,
    progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
) -> Result<(VecModel<f32>, Vec<Restart>), FitError> {
    let (mut kinds, _) = train_restarts(job, &[Branch::of(job.fit.cfg)], None, progress)?;
    choose(job, kinds.pop().unwrap_or_default())
}

/// A trained model and the seed it was trained with.
type Seeded = (u64, VecModel<f32>);

/// The models of `restarts` restarts (seeds [`restart_seed`]), each restart training
/// one model per branch from one warm-up ([`fit_branches`]): `[branch][restart]`, each
/// with its seed. `progress` sees every restart's warm-up and branches
/// ([`EpochStats::restart`]).
fn train_restarts(
    job: Restarts<'_>,
    branches: &[Branch],
    mut early: Option<EarlyChoice<'_>>,
    mut progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
) -> Result<(Vec<Vec<Seeded>>, Option<usize>), FitError> {
    let Restarts { fit, restarts, .. } = job;
    let mut kinds: Vec<Vec<Seeded>> = branches.iter().map(|_| Vec::new()).collect();
    let mut kept_early = None;
    for r in 0..restarts.max(1) {
        let c = FitConfig {
            seed: restart_seed(fit.cfg.seed, r),
            ..fit.cfg.clone()
        };
        // Only the first restart may be chosen early (`early` is asked for one restart).
        let trained = fit_branches(FitJob { cfg: &c, ..fit }, branches, early.take(), |s, m| {
            progress(&EpochStats { restart: r, ..*s }, m)
        })?;
        if r == 0 {
            kept_early = trained.kept_early;
        }
        for (kind, m) in kinds.iter_mut().zip(trained.models) {
            kind.push((c.seed, m));
        }
    }
    Ok((kinds, kept_early))
}

/// The model `criterion` ranks best among restarts (with every restart's criteria;
/// none when there is only one: nothing is chosen).
fn choose(
    job: Restarts<'_>,
    mut trained: Vec<Seeded>,
) -> Result<(VecModel<f32>, Vec<Restart>), FitError> {
    let Restarts {
        fit: FitJob { shape, x, cfg, .. },
        criterion,
        ..
    } = job;
    let restarts = trained.len();
    if restarts <= 1 {
        // Nothing to choose between: no criteria (they cost a neighbour search).
        let (_, model) = trained
            .pop()
            .ok_or_else(|| FitError::Config("no model trained".into()))?;
        return Ok((model, Vec::new()));
    }
    let d = shape.input;
    let z = normalise_rows(x, d)?;
    let neighbours = mine_neighbours(&z, d, 10);
    let graph = euclidean_neighbours(&z, d, cfg.choice_neighbours);
    let mut models = Vec::with_capacity(restarts);
    let mut runs = Vec::with_capacity(restarts);
    for (seed, model) in trained {
        let (l, mus) = answers(&model, x)?;
        let criteria = Criteria {
            silhouette: silhouette(&mus, shape.latent, &l, shape.clusters),
            agreement: agreement(&l, &neighbours, shape.clusters),
            consensus: 0.0,
            association: normalised_association(&l, &graph, shape.clusters),
        };
        runs.push(Restart {
            seed,
            criteria,
            kept: false,
            labels: l,
        });
        models.push(model);
    }
    let nmis: Vec<f64> = (0..restarts)
        .map(|i| {
            (0..restarts)
                .filter(|&j| j != i)
                .map(|j| metrics::nmi(&runs[i].labels, &runs[j].labels))
                .sum::<f64>()
                / (restarts - 1) as f64
        })
        .collect();
    for (r, v) in runs.iter_mut().zip(nmis) {
        r.criteria.consensus = v;
    }
    let criterion = criterion.used_with(restarts);
    let best = first_best(runs.iter().map(|r| r.criteria.get(criterion))).unwrap_or(0);
    if let Some(r) = runs.get_mut(best) {
        r.kept = true;
    }
    let model = models.swap_remove(best);
    Ok((model, runs))
}
