//! The clustering quality suite: every data set of a manifest, trained with `hvae
//! train`'s defaults over several seeds, scored beside classical methods.
//!
//! The manifest (`host-tools/data/suite/suite.json`, made by `make_suite.py` beside it)
//! lists the data sets, their cluster counts and the half each belongs to: defaults are
//! decided on the `tune` half; the `held_out` half is reported apart. The classical
//! methods come from two places: scikit-learn's (k-means, spherical k-means, Gaussian
//! mixture, Ward, spectral), run by `host-tools/reference/suite_baselines.py` into
//! `baselines.json`, and the tool's own k-means and spherical k-means
//! ([`crate::baselines`]), run here. Both see the features standardised to zero mean
//! and unit deviation; the model fits its own normalisation
//! ([`crate::train::fit_normalisation`]).
//!
//! A user's labelled files ([`load_files`], `hvae suite --data`) are scored the same way
//! as a third part, [`Part::User`], neither tuned on nor held out.

use crate::baselines::{self, BaselineConfig};
use crate::data::{self, Dataset};
use crate::metrics::{self, Scores};
use crate::select::{first_best, Criteria, Criterion, Restart};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The part of the suite a data set belongs to, which the table reports apart.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The shipped sets the defaults were chosen on (`tune` in a manifest).
    Tune,
    /// The shipped sets held out while the defaults were chosen (`held_out`).
    HeldOut,
    /// A user's own data (`user`; a manifest entry without `half`, or `hvae suite
    /// --data`): neither tuned on nor held out.
    #[default]
    User,
}

impl Part {
    /// Every part, in the order the table reports them.
    pub const ALL: [Part; 3] = [Part::Tune, Part::HeldOut, Part::User];

    /// The spelling in a manifest, the JSON and the CSV.
    pub const fn name(self) -> &'static str {
        match self {
            Part::Tune => "tune",
            Part::HeldOut => "held_out",
            Part::User => "user",
        }
    }

    /// The table's heading for the part's sets.
    pub const fn heading(self) -> &'static str {
        match self {
            Part::Tune => "tuned on",
            Part::HeldOut => "held out while tuning",
            Part::User => "your data",
        }
    }
}

/// One data set of the manifest.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SetSpec {
    /// Short name.
    pub name: String,
    /// File name, relative to the manifest's folder (with `hvae suite --data`, the
    /// path given).
    pub file: String,
    /// Number of classes, used as K.
    pub clusters: usize,
    /// The part of the suite it belongs to (`half` in the manifest; absent: a user's).
    #[serde(default)]
    pub half: Part,
    /// Where the data come from.
    #[serde(default)]
    pub source: String,
}

/// The manifest file.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The data sets.
    pub sets: Vec<SetSpec>,
    /// Package versions the sets were made with.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

/// Reads a manifest.
pub fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the suite manifest {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("bad suite manifest {}: {e}", path.display()))
}

/// Mean, smallest and largest of a measure over seeds.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// The statistics of `v` (zeros when empty).
    pub fn of(v: impl IntoIterator<Item = f64>) -> Stat {
        let v: Vec<f64> = v.into_iter().collect();
        if v.is_empty() {
            return Stat::default();
        }
        Stat {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One training run of the model.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Run {
    /// Seed.
    pub seed: u64,
    /// ACC.
    pub acc: f64,
    /// NMI.
    pub nmi: f64,
    /// ARI.
    pub ari: f64,
    /// Wall-clock seconds of the training (restarts included).
    pub seconds: f64,
    /// Clusters of the model kept (the data set's K unless `--clusters auto`).
    #[serde(default)]
    pub clusters: usize,
    /// Every restart's label-free criteria beside its scores.
    #[serde(default)]
    pub restarts: Vec<RestartScore>,
    /// With `--int8`: the int8 model's fidelity to this run's `f32` model on the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<crate::quant::Fidelity>,
    /// With the GMM candidate (the default): which model was kept, each one's
    /// criterion and scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<ChoiceScore>,
}

/// The plain model and the GMM candidate of one run: which was kept, the criterion
/// of each ([`crate::select::neighbour_agreement`]) and the scores of each (to judge
/// the choice).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub struct ChoiceScore {
    /// True when the candidate was kept.
    pub gmm_kept: bool,
    /// The plain model's criterion.
    pub agreement_plain: f64,
    /// The candidate's criterion.
    pub agreement_gmm: f64,
    /// The plain model's ACC and NMI.
    pub plain: (f64, f64),
    /// The candidate's ACC and NMI.
    pub gmm: (f64, f64),
    /// The choice was made early ([`crate::select::GmmChoice::early`]): the model not
    /// kept is scored as far as it was trained.
    #[serde(default)]
    pub early: bool,
    /// Where the choice was made, as a share of the joint phase
    /// ([`crate::select::GmmChoice::at`]; 1: at the end).
    #[serde(default = "at_the_end")]
    pub at: f32,
}

/// [`ChoiceScore::at`] of a file written before it was recorded: read as 1 (its
/// `early` says which choices were made before the end).
fn at_the_end() -> f32 {
    1.0
}

/// A restart's label-free criteria and its scores (to judge the criteria).
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct RestartScore {
    /// Its seed.
    pub seed: u64,
    /// Its criteria.
    pub criteria: Criteria,
    /// ACC.
    pub acc: f64,
    /// NMI.
    pub nmi: f64,
}

impl RestartScore {
    /// Scores `r` against `truth`.
    pub fn of(truth: &[u8], r: &Restart) -> RestartScore {
        let s = metrics::scores(truth, &r.labels);
        RestartScore {
            seed: r.seed,
            criteria: r.criteria,
            acc: s.acc,
            nmi: s.nmi,
        }
    }
}

/// Spearman's rank correlation of `a` and `b` (ties get their mean rank); 0 when
/// either is constant or shorter than 2.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    if a.len() < 2 || a.len() != b.len() {
        return 0.0;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va <= 0.0 || vb <= 0.0 {
        return 0.0;
    }
    cov / (va * vb).sqrt()
}

/// How well one label-free criterion picks among restarts, over a group of sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CriterionSummary {
    /// The criterion.
    pub criterion: Criterion,
    /// Spearman's rank correlation of the criterion with ACC over every restart of a
    /// set (all its seeds' restarts pooled), averaged over the sets whose restarts do
    /// not all score the same ACC (0 when none has).
    pub rho: f64,
    /// Mean ACC of the restart the criterion ranks first in each run
    /// ([`first_best`], as [`crate::select::fit_restarts`] picks).
    pub picked: f64,
}

/// How the label-free criteria pick among the restarts of a group of sets
/// ([`criteria_summary`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CriteriaSummary {
    /// One summary per criterion, in [`Criterion::ALL`]'s order.
    pub criteria: Vec<CriterionSummary>,
    /// Mean ACC of a restart.
    pub mean_restart: f64,
    /// Mean ACC of each run's best restart (by labels).
    pub best_restart: f64,
}

/// The criteria's summaries over `sets`, from the runs that have at least three
/// restarts (with two, the consensus cannot tell them apart): `None` when no run has.
pub fn criteria_summary(sets: &[&SetResult]) -> Option<CriteriaSummary> {
    let with: Vec<Vec<&[RestartScore]>> = sets
        .iter()
        .map(|s| {
            s.runs
                .iter()
                .map(|r| &r.restarts[..])
                .filter(|r| r.len() >= 3)
                .collect()
        })
        .filter(|runs: &Vec<&[RestartScore]>| !runs.is_empty())
        .collect();
    let runs: Vec<&[RestartScore]> = with.iter().flatten().copied().collect();
    if runs.is_empty() {
        return None;
    }
    let criteria = Criterion::ALL
        .into_iter()
        .map(|criterion| {
            let rho = Stat::of(with.iter().filter_map(|set| {
                let (c, acc): (Vec<f64>, Vec<f64>) = set
                    .iter()
                    .flat_map(|r| r.iter())
                    .map(|r| (r.criteria.get(criterion), r.acc))
                    .unzip();
                // A set whose restarts all score alike has nothing to rank.
                acc.windows(2)
                    .any(|w| w[0] != w[1])
                    .then(|| spearman(&c, &acc))
            }))
            .mean;
            let picked = Stat::of(runs.iter().map(|r| {
                first_best(r.iter().map(|x| x.criteria.get(criterion)))
                    .and_then(|i| r.get(i))
                    .map_or(0.0, |x| x.acc)
            }))
            .mean;
            CriterionSummary {
                criterion,
                rho,
                picked,
            }
        })
        .collect();
    Some(CriteriaSummary {
        criteria,
        mean_restart: Stat::of(runs.iter().flat_map(|r| r.iter().map(|x| x.acc))).mean,
        best_restart: Stat::of(runs.iter().map(|r| Stat::of(r.iter().map(|x| x.acc)).max)).mean,
    })
}

/// Mean scores of a classical method (over its seeds, when it has some).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub struct MethodScores {
    /// Mean ACC.
    pub acc: f64,
    /// Mean NMI.
    pub nmi: f64,
    /// Mean ARI.
    pub ari: f64,
}

/// The best classical value of one measure and the method that reached it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Best {
    /// Method name.
    pub method: String,
    /// Its mean value.
    pub value: f64,
}

/// Everything measured on one data set.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SetResult {
    /// Data set name.
    pub name: String,
    /// The part of the suite it belongs to.
    pub half: Part,
    /// Rows.
    pub rows: usize,
    /// Features.
    pub features: usize,
    /// K.
    pub clusters: usize,
    /// The model's runs, one per seed.
    pub runs: Vec<Run>,
    /// ACC over the seeds.
    pub acc: Stat,
    /// NMI over the seeds.
    pub nmi: Stat,
    /// ARI over the seeds.
    pub ari: Stat,
    /// Training seconds over the seeds.
    pub seconds: Stat,
    /// Classical methods' mean scores, by name (`sklearn_*` from `baselines.json`,
    /// `tool_*` run here).
    pub classical: BTreeMap<String, MethodScores>,
    /// Best classical mean ACC.
    pub best_acc: Option<Best>,
    /// Best classical mean NMI.
    pub best_nmi: Option<Best>,
}

impl SetResult {
    /// Mean ACC minus the best classical mean ACC (0 when there is no classical result).
    pub fn acc_margin(&self) -> f64 {
        self.best_acc
            .as_ref()
            .map_or(0.0, |b| self.acc.mean - b.value)
    }

    /// Mean NMI minus the best classical mean NMI.
    pub fn nmi_margin(&self) -> f64 {
        self.best_nmi
            .as_ref()
            .map_or(0.0, |b| self.nmi.mean - b.value)
    }

    /// At least the best classical method on both mean ACC and mean NMI.
    pub fn wins(&self) -> bool {
        self.acc_margin() >= 0.0 && self.nmi_margin() >= 0.0
    }

    /// The worst seed's ACC is within `tol` of the mean.
    pub fn stable(&self, tol: f64) -> bool {
        self.acc.mean - self.acc.min <= tol
    }

    /// Not more than `tol` below the best classical method on mean ACC or mean NMI.
    pub fn near_best(&self, tol: f64) -> bool {
        self.acc_margin() >= -tol && self.nmi_margin() >= -tol
    }

    /// Where the set stands on the suite's bars.
    pub fn standing(&self) -> Standing {
        Standing {
            at_least_best: self.wins(),
            near_best: self.near_best(NEAR_BEST),
            steady: self.stable(STEADY),
        }
    }

    /// The set scored on the runs of `seeds` alone (the classical results kept).
    pub fn on_seeds(&self, seeds: &[u64]) -> SetResult {
        let runs = self
            .runs
            .iter()
            .filter(|r| seeds.contains(&r.seed))
            .cloned()
            .collect();
        self.clone().with_runs(runs)
    }

    /// The set with `runs` as its runs and its statistics over them.
    fn with_runs(self, runs: Vec<Run>) -> SetResult {
        SetResult {
            acc: Stat::of(runs.iter().map(|r| r.acc)),
            nmi: Stat::of(runs.iter().map(|r| r.nmi)),
            ari: Stat::of(runs.iter().map(|r| r.ari)),
            seconds: Stat::of(runs.iter().map(|r| r.seconds)),
            runs,
            ..self
        }
    }
}

/// How far below the best classical method's mean ACC and NMI a set may be and still
/// count as near it ([`SetResult::near_best`]): the suite's bar.
pub const NEAR_BEST: f64 = 0.03;

/// How far below its mean ACC a set's worst seed may be and the set still count as
/// steady ([`SetResult::stable`]): the suite's bar.
pub const STEADY: f64 = 0.05;

/// Where a set stands on the suite's three bars ([`SetResult::standing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// At least the best classical method on mean ACC and on mean NMI.
    pub at_least_best: bool,
    /// Not more than [`NEAR_BEST`] below it on either.
    pub near_best: bool,
    /// The worst seed's ACC within [`STEADY`] of the mean.
    pub steady: bool,
}

/// Where a result lost a standing on the suite's bars that the committed one has: each
/// set in both is scored on the seeds it was run with (the committed runs of those
/// seeds; a set whose seeds the committed file lacks is not compared), both against
/// the classical results of `now`. One line per bar lost.
pub fn standings_lost(now: &[SetResult], committed: &[SetResult]) -> Vec<String> {
    let mut out = Vec::new();
    for r in now {
        let Some(c) = committed.iter().find(|c| c.name == r.name) else {
            continue;
        };
        let seeds: Vec<u64> = r.runs.iter().map(|x| x.seed).collect();
        let c = c.on_seeds(&seeds);
        if c.runs.len() != seeds.len() || seeds.is_empty() {
            continue;
        }
        let c = SetResult {
            best_acc: r.best_acc.clone(),
            best_nmi: r.best_nmi.clone(),
            ..c
        };
        let (was, is) = (c.standing(), r.standing());
        let margins = |s: &SetResult| format!("{:+.4} / {:+.4}", s.acc_margin(), s.nmi_margin());
        if was.at_least_best && !is.at_least_best {
            out.push(format!(
                "{}: no longer at least the best classical method (ACC / NMI margin {}, \
                 committed {})",
                r.name,
                margins(r),
                margins(&c)
            ));
        }
        if was.near_best && !is.near_best {
            out.push(format!(
                "{}: now more than {NEAR_BEST} below the best classical method (ACC / NMI \
                 margin {}, committed {})",
                r.name,
                margins(r),
                margins(&c)
            ));
        }
        if was.steady && !is.steady {
            out.push(format!(
                "{}: no longer steady (worst seed's ACC {:.4}, mean {:.4}: more than {STEADY} \
                 below; committed {:.4}, {:.4})",
                r.name, r.acc.min, r.acc.mean, c.acc.min, c.acc.mean
            ));
        }
    }
    out
}

/// The classical methods' scores of `baselines.json`, by set then method.
pub type Classical = BTreeMap<String, BTreeMap<String, MethodScores>>;

/// Reads scikit-learn's results (`baselines.json`); a missing file gives an empty map.
pub fn read_classical(path: &Path) -> Result<Classical, String> {
    #[derive(Deserialize)]
    struct Measure {
        mean: f64,
    }
    #[derive(Deserialize)]
    struct Method {
        acc: Measure,
        nmi: Measure,
        ari: Measure,
    }
    #[derive(Deserialize)]
    struct File {
        sets: BTreeMap<String, BTreeMap<String, Option<Method>>>,
    }
    if !path.exists() {
        return Ok(Classical::new());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: File =
        serde_json::from_str(&text).map_err(|e| format!("bad {}: {e}", path.display()))?;
    Ok(file
        .sets
        .into_iter()
        .map(|(set, methods)| {
            let m = methods
                .into_iter()
                .filter_map(|(name, s)| {
                    s.map(|s| {
                        (
                            format!("sklearn_{name}"),
                            MethodScores {
                                acc: s.acc.mean,
                                nmi: s.nmi.mean,
                                ari: s.ari.mean,
                            },
                        )
                    })
                })
                .collect();
            (set, m)
        })
        .collect())
}

/// Per-feature z-scores of `x` (`n x d`); a constant feature becomes zeros.
pub fn standardise(x: &[f32], d: usize) -> Vec<f32> {
    let n = (x.len() / d).max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += f64::from(v) / n;
        }
    }
    for row in x.chunks_exact(d) {
        for (j, &v) in row.iter().enumerate() {
            sq[j] += (f64::from(v) - mean[j]).powi(2) / n;
        }
    }
    x.chunks_exact(d)
        .flat_map(|row| {
            row.iter().enumerate().map(|(j, &v)| {
                let s = sq[j].sqrt();
                if s > 1e-12 {
                    ((f64::from(v) - mean[j]) / s) as f32
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// The tool's own classical methods on the standardised features: k-means and
/// spherical k-means, 10 restarts each, seed 0.
pub fn tool_baselines(data: &Dataset, truth: &[u8], k: usize) -> BTreeMap<String, MethodScores> {
    let z = standardise(data.features(), data.dim());
    let cfg = BaselineConfig::new(k);
    let mut out = BTreeMap::new();
    let score = |l: &[usize]| {
        let s = metrics::scores(truth, l);
        MethodScores {
            acc: s.acc,
            nmi: s.nmi,
            ari: s.ari,
        }
    };
    if let Ok(l) = baselines::kmeans(&z, data.dim(), &cfg) {
        out.insert("tool_kmeans".into(), score(&l));
    }
    if let Ok(r) = baselines::spherical_kmeans(&z, data.dim(), &cfg) {
        out.insert("tool_spherical_kmeans".into(), score(&r.labels));
    }
    out
}

/// The best mean of one measure over the classical methods.
pub fn best(
    classical: &BTreeMap<String, MethodScores>,
    f: impl Fn(&MethodScores) -> f64,
) -> Option<Best> {
    classical
        .iter()
        .max_by(|a, b| f(a.1).total_cmp(&f(b.1)))
        .map(|(m, s)| Best {
            method: m.clone(),
            value: f(s),
        })
}

/// A data set loaded for the suite.
pub struct Loaded {
    /// Its manifest entry.
    pub spec: SetSpec,
    /// Its rows.
    pub data: Dataset,
    /// Class indices `0..K` per row.
    pub truth: Vec<u8>,
}

/// Loads every set of `manifest` (at `dir`) whose name passes `keep`.
pub fn load_sets(
    manifest: &Manifest,
    dir: &Path,
    keep: impl Fn(&SetSpec) -> bool,
) -> Result<Vec<Loaded>, crate::Error> {
    let mut out = Vec::new();
    for spec in manifest.sets.iter().filter(|s| keep(s)) {
        let path: PathBuf = dir.join(&spec.file);
        let data = data::load(&path)?;
        let truth =
            crate::commands::train::class_indices(&data, spec.clusters)?.ok_or_else(|| {
                crate::Error::BadInput(format!("{} has no label column", path.display()))
            })?;
        out.push(Loaded {
            spec: spec.clone(),
            data,
            truth,
        });
    }
    Ok(out)
}

/// Loads a user's labelled data files as sets of the suite ([`Part::User`]): each is
/// named after its file (without `.gz` and the extension) and clustered with K = the
/// number of distinct values of its `label` column.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<Loaded>, crate::Error> {
    let mut out: Vec<Loaded> = Vec::new();
    for path in paths {
        let name = set_name(path);
        if out.iter().any(|l| l.spec.name == name) {
            return Err(crate::Error::BadInput(format!(
                "{}: a second file named {name}: the sets are named after their files",
                path.display()
            )));
        }
        let data = data::load(path)?;
        let Some(labels) = data.labels() else {
            return Err(crate::Error::BadInput(format!(
                "{}: no label column: the suite scores the clusters against the labels \
                 (hvae train clusters data without them)",
                path.display()
            )));
        };
        let classes = crate::commands::train::classes_of(labels);
        let Some((truth, clusters @ 2..=255)) = classes else {
            return Err(crate::Error::BadInput(format!(
                "{}: the label column has {} classes: the suite needs 2 to 255",
                path.display(),
                classes.map_or_else(|| "more than 256".into(), |(_, c)| c.to_string())
            )));
        };
        let spec = SetSpec {
            name,
            file: path.display().to_string(),
            clusters,
            half: Part::User,
            source: String::new(),
        };
        out.push(Loaded { spec, data, truth });
    }
    Ok(out)
}

/// A data file's set name: its file name without `.gz` and then its extension.
fn set_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = file.strip_suffix(".gz").unwrap_or(&file);
    Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

/// Summary of a set's runs beside its classical results.
pub fn summarise(
    l: &Loaded,
    mut runs: Vec<Run>,
    classical: BTreeMap<String, MethodScores>,
) -> SetResult {
    runs.sort_by_key(|r| r.seed);
    SetResult {
        name: l.spec.name.clone(),
        half: l.spec.half,
        rows: l.data.len(),
        features: l.data.dim(),
        clusters: l.spec.clusters,
        runs: Vec::new(),
        acc: Stat::default(),
        nmi: Stat::default(),
        ari: Stat::default(),
        seconds: Stat::default(),
        best_acc: best(&classical, |s| s.acc),
        best_nmi: best(&classical, |s| s.nmi),
        classical,
    }
    .with_runs(runs)
}

/// A run's scores from its labels.
pub fn run_of(seed: u64, truth: &[u8], labels: &[usize], seconds: f64) -> Run {
    let Scores { acc, nmi, ari } = metrics::scores(truth, labels);
    Run {
        seed,
        acc,
        nmi,
        ari,
        seconds,
        clusters: 0,
        restarts: Vec::new(),
        int8: None,
        choice: None,
    }
}

/// Where a result fell below a committed one: for every seed run in both, ACC or NMI
/// more than `tol` below. One line per regression.
pub fn regressions(now: &[SetResult], committed: &[SetResult], tol: f64) -> Vec<String> {
    let mut out = Vec::new();
    for r in now {
        let Some(c) = committed.iter().find(|c| c.name == r.name) else {
            continue;
        };
        for run in &r.runs {
            let Some(old) = c.runs.iter().find(|o| o.seed == run.seed) else {
                continue;
            };
            for (what, new, was) in [("ACC", run.acc, old.acc), ("NMI", run.nmi, old.nmi)] {
                if new < was - tol {
                    out.push(format!(
                        "{} seed {}: {what} {new:.4} is more than {tol} below the committed {was:.4}",
                        r.name, run.seed
                    ));
                }
            }
        }
    }
    out
}
