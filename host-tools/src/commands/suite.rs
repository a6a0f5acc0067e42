//! `hvae suite`: the clustering quality suite (see [`crate::suite`]).

use super::outln;
use super::train;
use crate::suite::{self, Loaded, Part, Run, SetResult};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Long help of the subcommand (`hvae suite --help`).
pub const LONG_ABOUT: &str = "Run the clustering quality suite: train a model with `hvae \
    train`'s defaults on every data set of the manifest, once per seed, and print one table \
    of ACC, NMI and ARI (mean, min and max over the seeds) and the training time, beside \
    classical methods on the same data with the same K: scikit-learn's k-means, spherical \
    k-means, Gaussian mixture, Ward and spectral clustering (read from baselines.json next \
    to the manifest, made by host-tools/reference/suite_baselines.py) and the tool's own \
    k-means and spherical k-means (run here). The classical methods see every feature \
    standardised to zero mean and unit deviation; the model fits its own normalisation. \
    Sets of the `tune` half were used to choose the defaults; the `held_out` half was not \
    looked at while tuning and is reported apart.\n\n\
    --data FILE (repeatable) runs the same on your own labelled data instead: each file \
    (CSV, plain or gzipped, with a `label` column) is a set named after the file, K is \
    its number of distinct labels, and the classical columns are the tool's own unless \
    --baselines names the scikit-learn results of host-tools/reference/suite_baselines.py \
    --data FILE... --out FILE. --train-args then compares other options on your data, \
    e.g. \"--neighbour-space normalised\". A manifest entry without `half` is reported as \
    your data too.\n\n\
    --int8 also quantises every trained model to int8 (calibrated on the set's rows, as \
    hvae export --quantize int8 does) and prints its fidelity to the f32 model per set: \
    label agreement, worst and mean mu cosine, ACC and NMI change; the exit status is 1 \
    when a run misses a bar (agreement >= 0.99, worst cosine >= 0.99, mean >= 0.999, \
    ACC/NMI drop <= 0.01).\n\n\
    --quick runs a few sets with one seed; with --check FILE (a --json output of an earlier \
    run) the exit status is 1 when a set's ACC or NMI falls more than --tolerance below it, \
    or when a set loses a standing it has there on the same seeds (scored against the same \
    classical results): at least the best classical method on ACC and NMI, not more than \
    0.03 below it, its worst seed's ACC within 0.05 of the mean.";

/// The sets of `--quick`: small and fast, from both halves.
pub const QUICK_SETS: &[&str] = &["iris", "wine", "ItalyPowerDemand_feat", "activity"];

/// Which half of the suite to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Half {
    /// Both halves.
    All,
    /// The sets the defaults were tuned on.
    Tune,
    /// The sets held out while tuning.
    HeldOut,
}

/// Arguments of `hvae suite`.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// The suite's manifest (data files and baselines.json are read beside it).
    #[arg(
        long,
        default_value = "host-tools/data/suite/suite.json",
        value_name = "FILE"
    )]
    pub manifest: PathBuf,
    /// Seeds per set (0, 1, ...).
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub seeds: u32,
    /// Your own labelled data instead of the manifest's sets (repeat for several files):
    /// each is a set named after its file, with K = the number of distinct labels.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["manifest", "sets", "half", "quick"])]
    pub data: Vec<PathBuf>,
    /// scikit-learn's classical results for the sets (`suite_baselines.py --out`;
    /// default: baselines.json beside the manifest, none with --data).
    #[arg(long, value_name = "FILE.json")]
    pub baselines: Option<PathBuf>,
    /// Only these sets (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub sets: Vec<String>,
    /// Only one half.
    #[arg(long, value_enum, default_value_t = Half::All)]
    pub half: Half,
    /// A few small sets with one seed (for CI; see QUICK_SETS).
    #[arg(long)]
    pub quick: bool,
    /// Options passed to `hvae train` for every run, e.g. "--epochs 200 --gamma 4".
    #[arg(long, allow_hyphen_values = true, value_name = "OPTIONS")]
    pub train_args: Option<String>,
    /// Train with `--clusters auto` (K chosen without labels, up to 10 or the
    /// `--max-clusters` of --train-args) instead of the number of classes; the table is
    /// followed by the K each run kept and how often it is the number of classes.
    #[arg(long)]
    pub clusters_auto: bool,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,
    /// Write the table as CSV.
    #[arg(long, value_name = "FILE.csv")]
    pub csv: Option<PathBuf>,
    /// Compare with a committed --json output: exit status 1 on a regression.
    #[arg(long, value_name = "FILE.json")]
    pub check: Option<PathBuf>,
    /// Largest allowed drop of a run's ACC or NMI against --check.
    #[arg(long, default_value_t = 0.02)]
    pub tolerance: f64,
    /// Also quantise every trained model to int8 and report its fidelity (see above).
    #[arg(long)]
    pub int8: bool,
    /// Training runs at a time (default: the machine's cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// The `--json` file.
#[derive(Debug, Deserialize, Serialize)]
pub struct SuiteReport {
    /// The `hvae train` options beyond the defaults (empty for the defaults).
    pub train_args: String,
    /// Seeds per set.
    pub seeds: u32,
    /// Wall-clock seconds of the whole suite.
    pub seconds: f64,
    /// One entry per set.
    pub sets: Vec<SetResult>,
}

fn one_run(
    l: &Loaded,
    path: &Path,
    seed: u64,
    extra: Option<&str>,
    auto: bool,
    int8: bool,
) -> Result<Run, Error> {
    let mut options = vec!["--seed".to_string(), seed.to_string(), "--quiet".into()];
    options.extend(extra.unwrap_or("").split_whitespace().map(String::from));
    let k = if auto {
        "auto".to_string()
    } else {
        l.spec.clusters.to_string()
    };
    let args = train::args_with(path, &k, Path::new("-"), &options)
        .map_err(|e| Error::BadInput(format!("--train-args: {}", e.one_line())))?;
    let start = std::time::Instant::now();
    let trained = train::train_on(&args, &l.data, None)?;
    let seconds = start.elapsed().as_secs_f64();
    let pred = train::predict(&trained.model, &l.data);
    let mut run = suite::run_of(seed, &l.truth, &pred, seconds);
    run.clusters = trained.model.shape().clusters;
    if int8 {
        let (rows, d) = (l.data.features(), l.data.dim());
        let q = crate::quant::quantise(&trained.model, rows, d)
            .map_err(|e| Error::BadInput(format!("int8: {e}")))?;
        run.int8 = Some(crate::quant::fidelity(
            &trained.model,
            &q,
            rows,
            Some(&l.truth[..]),
        ));
    }
    if let (Some(c), Some(other)) = (trained.gmm, &trained.other) {
        let o = crate::metrics::scores(&l.truth, &train::predict(other, &l.data));
        let (kept, o) = ((run.acc, run.nmi), (o.acc, o.nmi));
        run.choice = Some(suite::ChoiceScore {
            gmm_kept: c.gmm_kept,
            agreement_plain: c.agreement_plain,
            agreement_gmm: c.agreement_gmm,
            plain: if c.gmm_kept { o } else { kept },
            gmm: if c.gmm_kept { kept } else { o },
            early: c.early(),
            at: c.at,
        });
    }
    run.restarts = trained
        .restarts
        .iter()
        .map(|r| suite::RestartScore::of(&l.truth, r))
        .collect();
    Ok(run)
}

/// Runs `hvae suite`.
pub fn run(args: &SuiteArgs, out: &mut dyn Write) -> Result<(), Error> {
    let (sets, dir, beside) = if args.data.is_empty() {
        let manifest = suite::read_manifest(&args.manifest).map_err(Error::BadInput)?;
        let dir = args
            .manifest
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let beside = Some(dir.join("baselines.json"));
        (load_selected(args, &manifest, &dir)?, dir, beside)
    } else {
        (suite::load_files(&args.data)?, PathBuf::new(), None)
    };
    let classical = match args.baselines.as_ref().or(beside.as_ref()) {
        Some(p) => suite::read_classical(p).map_err(Error::BadInput)?,
        None => suite::Classical::new(),
    };
    let seeds = if args.quick { 1 } else { args.seeds };
    if sets.is_empty() {
        return Err(Error::BadInput(
            "no data set of the manifest was selected".into(),
        ));
    }
    let jobs: Vec<(usize, u64)> = (0..sets.len())
        .flat_map(|i| (0..u64::from(seeds)).map(move |s| (i, s)))
        .collect();
    let threads = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len());
    let start = std::time::Instant::now();
    let queue = Mutex::new(jobs.into_iter());
    let results: Mutex<Vec<(usize, Result<Run, Error>)>> = Mutex::new(Vec::new());
    let extra = args.train_args.as_deref();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((i, seed)) = next else { break };
                let l = &sets[i];
                let path = dir.join(&l.spec.file);
                let r = one_run(l, &path, seed, extra, args.clusters_auto, args.int8);
                if let Ok(mut v) = results.lock() {
                    v.push((i, r));
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| Error::Failed("a training thread panicked".into()))?;
    let mut per_set: Vec<Vec<Run>> = vec![Vec::new(); sets.len()];
    for (i, r) in results {
        per_set[i].push(
            r.map_err(|e| Error::Failed(format!("{}: {}", sets[i].spec.name, e.one_line())))?,
        );
    }
    let report: Vec<SetResult> = sets
        .iter()
        .zip(per_set)
        .map(|(l, runs)| {
            let mut c = classical.get(&l.spec.name).cloned().unwrap_or_default();
            c.extend(suite::tool_baselines(&l.data, &l.truth, l.spec.clusters));
            suite::summarise(l, runs, c)
        })
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    print_table(out, &report, seeds, seconds, threads)?;
    print_criteria(out, &report)?;
    if args.clusters_auto {
        print_chosen_k(out, &report)?;
    }
    let int8_misses = if args.int8 {
        print_int8_table(out, &report)?
    } else {
        Vec::new()
    };
    let file = SuiteReport {
        train_args: args.train_args.clone().unwrap_or_default(),
        seeds,
        seconds,
        sets: report,
    };
    if let Some(p) = &args.json {
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Failed(e.to_string()))?;
        crate::fsio::write_bytes_atomic(p, &json)?;
    }
    if let Some(p) = &args.csv {
        crate::fsio::write_bytes_atomic(p, csv_of(&file.sets).as_bytes())?;
    }
    if let Some(p) = &args.check {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::BadInput(format!("cannot read {}: {e}", p.display())))?;
        let committed: SuiteReport = serde_json::from_str(&text)
            .map_err(|e| Error::BadInput(format!("bad {}: {e}", p.display())))?;
        let mut bad = suite::regressions(&file.sets, &committed.sets, args.tolerance);
        bad.extend(suite::standings_lost(&file.sets, &committed.sets));
        if !bad.is_empty() {
            return Err(Error::Failed(format!(
                "{} regression(s) against {}: {}",
                bad.len(),
                p.display(),
                bad.join("; ")
            )));
        }
        outln!(
            out,
            "no regression beyond {} against {}, and every set keeps its standing on the bars",
            args.tolerance,
            p.display()
        )?;
    }
    if !int8_misses.is_empty() {
        return Err(Error::Failed(format!(
            "the int8 models miss the fidelity bars: {}",
            int8_misses.join("; ")
        )));
    }
    Ok(())
}

/// The int8 fidelity per set (worst over the seeds); returns the bars missed, one line
/// per run.
fn print_int8_table(out: &mut dyn Write, sets: &[SetResult]) -> Result<Vec<String>, Error> {
    outln!(
        out,
        "int8 beside f32 (worst over the seeds): label agreement, mu cosine worst and mean, \
         largest ACC and NMI drop (f32 - int8)"
    )?;
    outln!(
        out,
        "{:<22} {:>9} {:>9} {:>9} {:>8} {:>8} | verdict",
        "set",
        "agreement",
        "worst cos",
        "mean cos",
        "ACC drop",
        "NMI drop"
    )?;
    let mut misses = Vec::new();
    for s in sets {
        let fs: Vec<&crate::quant::Fidelity> =
            s.runs.iter().filter_map(|r| r.int8.as_ref()).collect();
        if fs.is_empty() {
            continue;
        }
        let min = |f: &dyn Fn(&crate::quant::Fidelity) -> f64| {
            fs.iter().map(|x| f(x)).fold(f64::INFINITY, f64::min)
        };
        let max = |f: &dyn Fn(&crate::quant::Fidelity) -> f64| {
            fs.iter().map(|x| f(x)).fold(f64::NEG_INFINITY, f64::max)
        };
        let acc_drop = max(&|x| x.acc.map_or(0.0, |(a, b)| a - b));
        let nmi_drop = max(&|x| x.nmi.map_or(0.0, |(a, b)| a - b));
        let mut bad = Vec::new();
        for r in &s.runs {
            if let Some(f) = &r.int8 {
                for m in f.failures() {
                    bad.push(format!("{} seed {}: {m}", s.name, r.seed));
                }
            }
        }
        outln!(
            out,
            "{:<22} {:>9.4} {:>9.5} {:>9.6} {:>+8.4} {:>+8.4} | {}",
            s.name,
            min(&|x| x.agreement),
            min(&|x| x.worst_cosine),
            min(&|x| x.mean_cosine),
            acc_drop,
            nmi_drop,
            if bad.is_empty() {
                "meets the bars"
            } else {
                "MISSES"
            }
        )?;
        misses.extend(bad);
    }
    Ok(misses)
}

fn load_selected(
    args: &SuiteArgs,
    manifest: &suite::Manifest,
    dir: &Path,
) -> Result<Vec<Loaded>, Error> {
    for name in &args.sets {
        if !manifest.sets.iter().any(|s| &s.name == name) {
            return Err(Error::BadInput(format!(
                "no set named {name} in the manifest"
            )));
        }
    }
    suite::load_sets(manifest, dir, |s| {
        let named = if args.quick && args.sets.is_empty() {
            QUICK_SETS.contains(&s.name.as_str())
        } else {
            args.sets.is_empty() || args.sets.contains(&s.name)
        };
        let half = match args.half {
            Half::All => true,
            Half::Tune => s.half == Part::Tune,
            Half::HeldOut => s.half == Part::HeldOut,
        };
        named && half
    })
}

fn short(method: &str) -> &str {
    method
        .trim_start_matches("sklearn_")
        .trim_start_matches("tool_")
}

fn print_table(
    out: &mut dyn Write,
    sets: &[SetResult],
    seeds: u32,
    seconds: f64,
    threads: usize,
) -> Result<(), Error> {
    outln!(
        out,
        "hvae (defaults, {seeds} seed(s): mean [min, max]) beside the best classical method's mean"
    )?;
    outln!(
        out,
        "{:<22} {:>5} {:>5} {:>3} | {:<19} {:<19} {:>5} {:>6} | {:<24} {:<24} | {}",
        "set",
        "n",
        "d",
        "K",
        "ACC",
        "NMI",
        "ARI",
        "s",
        "best ACC",
        "best NMI",
        "verdict"
    )?;
    for part in Part::ALL {
        let rows: Vec<&SetResult> = sets.iter().filter(|s| s.half == part).collect();
        if rows.is_empty() {
            continue;
        }
        outln!(out, "-- {} --", part.heading())?;
        for s in rows {
            let b = |x: &Option<suite::Best>| {
                x.as_ref()
                    .map(|b| format!("{:.3} {}", b.value, short(&b.method)))
                    .unwrap_or_else(|| "-".into())
            };
            let verdict = if s.wins() {
                "at least best".to_string()
            } else {
                format!("{:+.3} ACC {:+.3} NMI", s.acc_margin(), s.nmi_margin())
            };
            outln!(
                out,
                "{:<22} {:>5} {:>5} {:>3} | {:.3} [{:.3},{:.3}] {:.3} [{:.3},{:.3}] {:>5.3} {:>6.2} | {:<24} {:<24} | {}{}",
                s.name, s.rows, s.features, s.clusters,
                s.acc.mean, s.acc.min, s.acc.max,
                s.nmi.mean, s.nmi.min, s.nmi.max,
                s.ari.mean, s.seconds.mean,
                b(&s.best_acc), b(&s.best_nmi),
                verdict,
                if s.stable(suite::STEADY) { "" } else { " (unstable)" }
            )?;
        }
    }
    let wins = sets.iter().filter(|s| s.wins()).count();
    let worst = sets
        .iter()
        .map(|s| s.acc_margin().min(s.nmi_margin()))
        .fold(f64::INFINITY, f64::min);
    let far = sets
        .iter()
        .filter(|s| !s.near_best(suite::NEAR_BEST))
        .count();
    let stable = sets.iter().filter(|s| s.stable(suite::STEADY)).count();
    outln!(
        out,
        "at least the best classical method (ACC and NMI) on {wins} of {n} sets, more than {} \
         below it on {far}; worst margin {worst:+.3}; worst seed within {} of the mean on \
         {stable} of {n}; {seconds:.0} s on {threads} thread(s)",
        suite::NEAR_BEST,
        suite::STEADY,
        n = sets.len(),
    )?;
    Ok(())
}

/// With `--clusters-auto`: the K each run kept beside the number of classes, and how
/// often the two are equal.
fn print_chosen_k(out: &mut dyn Write, sets: &[SetResult]) -> Result<(), Error> {
    let runs: usize = sets.iter().map(|s| s.runs.len()).sum();
    let found: Vec<&Run> = sets
        .iter()
        .flat_map(|s| s.runs.iter().filter(move |r| r.clusters == s.clusters))
        .collect();
    let each: Vec<String> = sets
        .iter()
        .map(|s| {
            let ks: Vec<String> = s.runs.iter().map(|r| r.clusters.to_string()).collect();
            format!("{} {} ({})", s.name, ks.join(","), s.clusters)
        })
        .collect();
    outln!(
        out,
        "K kept by --clusters auto, by seed (the number of classes): {}",
        each.join("; ")
    )?;
    if found.is_empty() {
        outln!(out, "the number of classes found on 0 of {runs} runs")?;
    } else {
        outln!(
            out,
            "the number of classes found on {} of {runs} runs, there ACC {:.3} NMI {:.3} (mean)",
            found.len(),
            suite::Stat::of(found.iter().map(|r| r.acc)).mean,
            suite::Stat::of(found.iter().map(|r| r.nmi)).mean
        )?;
    }
    Ok(())
}

/// With restarts: how each label-free criterion picks among them, per part.
fn print_criteria(out: &mut dyn Write, sets: &[SetResult]) -> Result<(), Error> {
    let mut header = true;
    for part in Part::ALL {
        let group: Vec<&SetResult> = sets.iter().filter(|s| s.half == part).collect();
        let Some(summary) = suite::criteria_summary(&group) else {
            continue;
        };
        if header {
            outln!(
                out,
                "restarts: each criterion's rank correlation with ACC (Spearman, a set's \
                 restarts pooled, mean over the sets) and the mean ACC of the restart it picks"
            )?;
            header = false;
        }
        let cells: Vec<String> = summary
            .criteria
            .iter()
            .map(|c| {
                format!(
                    "{} rho {:+.2} ACC {:.3}",
                    c.criterion.name(),
                    c.rho,
                    c.picked
                )
            })
            .collect();
        outln!(
            out,
            "{}: {}; mean restart {:.3}, best restart {:.3}",
            part.heading(),
            cells.join(", "),
            summary.mean_restart,
            summary.best_restart
        )?;
    }
    Ok(())
}

fn csv_of(sets: &[SetResult]) -> String {
    let mut s = String::from(
        "set,half,rows,features,clusters,acc_mean,acc_min,acc_max,nmi_mean,nmi_min,nmi_max,\
         ari_mean,ari_min,ari_max,seconds_mean,best_acc_method,best_acc,best_nmi_method,best_nmi\n",
    );
    for r in sets {
        let (am, av) = r
            .best_acc
            .as_ref()
            .map_or((String::new(), f64::NAN), |b| (b.method.clone(), b.value));
        let (nm, nv) = r
            .best_nmi
            .as_ref()
            .map_or((String::new(), f64::NAN), |b| (b.method.clone(), b.value));
        s.push_str(&format!(
            "{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.3},{am},{av:.4},{nm},{nv:.4}\n",
            r.name, r.half.name(), r.rows, r.features, r.clusters,
            r.acc.mean, r.acc.min, r.acc.max, r.nmi.mean, r.nmi.min, r.nmi.max,
            r.ari.mean, r.ari.min, r.ari.max, r.seconds.mean
        ));
    }
    s
}
