#!/usr/bin/env python3
"""Rebuilds every data set of the clustering quality suite beside this script, and the
manifest `suite.json`.

Each set is written as `<name>.csv.gz`: a gzipped CSV with a header line, the feature
columns, then an integer `label` column holding the classes 0..K-1 (the format the `hvae`
tool reads; `label` is never a feature). The gzip stream has no file name and mtime 0 and
every random draw comes from `numpy.random.default_rng(<fixed seed>)`, so running the
script twice gives the same bytes (with the pinned versions of
host-tools/reference/requirements.txt; other numpy/scipy builds may differ in the last
printed digit of a synthetic value).

Sets (see README.md beside this script for sizes, provenance and licences):

- scikit-learn's bundled sets, raw features as scikit-learn gives them, written exactly
  (shortest round-trip text): `digits` (pixel / 16, the same bytes as
  host-tools/data/digits.csv.gz), `iris`, `wine`, `breast_cancer`.
- UCR archive sets read from the pinned sktime wheel (opened as a zip; sktime is not
  installed; the wheel is fetched with `pip download` unless `--wheel` names a copy, and
  its SHA-256 is checked): ArrowHead, ItalyPowerDemand, OSULeaf, ACSF1, train and test
  concatenated (train first, file order kept), labels mapped to 0..K-1 in the sorted
  order of the original class names. Each gives two sets:
  - `<name>_raw`: the series, each z-normalised per row (mean 0, population std 1);
  - `<name>_feat`: per-series summary features from the one function
    `series_features` (mean, std, min, max, skewness, excess kurtosis, the three
    quartiles, mean and max absolute first difference, zero-crossing rate of the
    de-meaned series, lag-1 autocorrelation), computed on the series as the wheel ships
    them. The UCR archive ships these four sets already z-normalised per series, so
    their per-series mean and std are constant up to rounding (|mean| < 1e-8, std = 1 or
    sqrt((n-1)/n)); a feature whose spread over the set is below 1e-6 of its magnitude
    is dropped (the script prints which), leaving 11 features.
- synthetic (seeded):
  - `vmf_overlap`: 5 von Mises-Fisher clusters of 200 on S^9, means with pairwise
    cosine 0.3, common kappa 10 (chosen so that k-means is neither trivial nor hopeless);
  - `vmf_unequal`: 5 vMF clusters on S^9, sizes 500/250/125/75/50, kappas
    6/10/18/28/50, means with pairwise cosine 0.2;
  - `activity`: windows of a simulated 3-axis accelerometer (50 Hz, 32 samples =
    0.64 s, in g, +-4 g range, 12-bit), classes rest / walk / run / shake, device
    orientation (so the gravity direction in the device frame) random per window,
    sensor noise and bias; 16 features per window: per-axis mean, std, min, max and
    the same four of the magnitude |a|. 300 windows per class.
  - `activity_imbalanced`: the same generator, 1000 rest / 400 walk / 200 run / 100
    shake windows (smallest : largest = 1 : 10).
  vMF draws are exact (scipy.stats.vonmises_fisher, Wood's rejection sampler). Rows of
  the synthetic sets are shuffled.

Floats: sets read from a text source (scikit-learn) keep their exact shortest text;
computed values (z-normalised series, features, synthetic draws) are written with
`%.6g`.

Usage:
    host-tools/reference/.venv/bin/python host-tools/data/suite/make_suite.py \
        [--wheel PATH/sktime-1.2.0-py3-none-any.whl] [--out DIR]
"""

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from csv_gz import fmt_exact, write_csv_gz  # noqa: E402 (the data folder's shared writer)

SKTIME_VERSION = "1.2.0"
SKTIME_WHEEL = f"sktime-{SKTIME_VERSION}-py3-none-any.whl"
SKTIME_SHA256 = "dbffc6731d2d683b668dceb5e2bbc5804bebc8446b4c580803a281684d90e4ae"
UCR_SETS = ["ArrowHead", "ItalyPowerDemand", "OSULeaf", "ACSF1"]

# Halves of the suite: tuning decisions are made on "tune"; "held_out" is only reported.
TUNE = {"digits", "wine", "ArrowHead_raw", "ItalyPowerDemand_feat", "OSULeaf_raw",
        "vmf_overlap", "activity"}

SEEDS = {"vmf_overlap": 20240101, "vmf_unequal": 20240102,
         "activity": 20240103, "activity_imbalanced": 20240104}


# ---------------------------------------------------------------- writing

def fmt_g(v: float) -> str:
    """Compact `%.6g` text; -0 is written as 0."""
    s = "%.6g" % (float(v) + 0.0)
    return "0" if s == "-0" else s


def column_name(s: str) -> str:
    """A plain column name: lower case, runs of other characters as `_`."""
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def relabel(classes):
    """Maps class names to 0..K-1 in sorted order (numeric order if all are integers)."""
    names = sorted(set(classes))
    if all(re.fullmatch(r"-?\d+", c) for c in names):
        names = sorted(names, key=int)
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[c] for c in classes]), names


# ---------------------------------------------------------------- scikit-learn sets

def sklearn_sets():
    out = []
    d = load_digits()
    out.append(("digits", list(d.feature_names), d.data / 16.0, d.target,
                "scikit-learn load_digits: 8x8 handwritten digits, grey level / 16"))
    for name, loader, what in [
        ("iris", load_iris, "Fisher's iris measurements (cm)"),
        ("wine", load_wine, "chemical analysis of three Italian wine cultivars"),
        ("breast_cancer", load_breast_cancer, "Wisconsin diagnostic breast cancer, "
         "cell nucleus features (0 = malignant, 1 = benign)"),
    ]:
        b = loader()
        out.append((name, [column_name(f) for f in b.feature_names], b.data, b.target,
                    f"scikit-learn load_{name}: {what}, raw features"))
    return out


# ---------------------------------------------------------------- UCR sets from the wheel

def fetch_wheel(tmpdir):
    """Downloads the pinned sktime wheel from PyPI (no dependencies, nothing installed)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", f"sktime=={SKTIME_VERSION}", "-d", tmpdir],
                   check=True)
    return os.path.join(tmpdir, SKTIME_WHEEL)


def read_ts(zf, name, part):
    """Series and class names of one univariate, equal-length `.ts` file."""
    text = zf.read(f"sktime/datasets/data/{name}/{name}_{part}.ts").decode("utf-8")
    series, classes, in_data = [], [], False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            in_data = line.lower() == "@data"
            continue
        assert in_data, line[:40]
        values, label = line.rsplit(":", 1)
        series.append([float(v) for v in values.split(",")])
        classes.append(label.strip())
    x = np.array(series, dtype=np.float64)
    assert x.ndim == 2 and np.isfinite(x).all(), f"{name}_{part}: ragged or missing values"
    return x, classes


FEATURES = ["mean", "std", "min", "max", "skewness", "kurtosis", "q25", "median", "q75",
            "mean_abs_diff", "max_abs_diff", "zero_cross_rate", "autocorr_lag1"]


def series_features(x):
    """Summary features of each row of `x` (one series per row), in FEATURES order."""
    mean = x.mean(axis=1)
    c = x - mean[:, None]
    m2 = (c ** 2).mean(axis=1)
    std = np.sqrt(m2)
    safe = np.where(m2 > 0, m2, 1.0)
    skew = np.where(m2 > 0, (c ** 3).mean(axis=1) / safe ** 1.5, 0.0)
    kurt = np.where(m2 > 0, (c ** 4).mean(axis=1) / safe ** 2 - 3.0, 0.0)
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=1)
    d = np.abs(np.diff(x, axis=1))
    s = np.sign(c)
    zcr = (s[:, 1:] * s[:, :-1] < 0).mean(axis=1)
    ac1 = np.where(m2 > 0, (c[:, 1:] * c[:, :-1]).sum(axis=1) / np.where(m2 > 0, (c ** 2).sum(axis=1), 1.0), 0.0)
    return np.column_stack([mean, std, x.min(axis=1), x.max(axis=1), skew, kurt, q25, q50,
                            q75, d.mean(axis=1), d.max(axis=1), zcr, ac1])


def drop_constant(x, names):
    """Drops the features whose spread over the rows is < 1e-6 of their magnitude."""
    spread = x.max(axis=0) - x.min(axis=0)
    keep = spread > 1e-6 * np.maximum(1.0, np.abs(x).max(axis=0))
    return x[:, keep], [n for n, k in zip(names, keep) if k], [n for n, k in zip(names, keep) if not k]


def ucr_sets(wheel):
    with open(wheel, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if digest != SKTIME_SHA256:
        sys.exit(f"{wheel}: SHA-256 {digest}, expected {SKTIME_SHA256} (sktime {SKTIME_VERSION})")
    out = []
    with zipfile.ZipFile(wheel) as zf:
        present = {n.split("/")[3] for n in zf.namelist()
                   if n.startswith("sktime/datasets/data/") and n.endswith(".ts")}
        for name in UCR_SETS:
            if name not in present:
                sys.exit(f"{name} is not in {SKTIME_WHEEL}")
            x1, c1 = read_ts(zf, name, "TRAIN")
            x2, c2 = read_ts(zf, name, "TEST")
            x = np.vstack([x1, x2])
            y, classes = relabel(c1 + c2)
            n, length = x.shape
            z = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
            src = (f"UCR archive {name} (train {len(c1)} + test {len(c2)}, series length "
                   f"{length}, classes {' '.join(classes)} -> 0..{len(classes) - 1}) from the "
                   f"sktime {SKTIME_VERSION} wheel")
            out.append((f"{name}_raw", [f"t{i}" for i in range(length)], z, y,
                        src + "; each series z-normalised"))
            f, names, dropped = drop_constant(series_features(x), FEATURES)
            if dropped:
                print(f"{name}_feat: constant features dropped: {', '.join(dropped)}")
            out.append((f"{name}_feat", names, f, y,
                        src + f"; {len(names)} summary features per series"))
    return out


# ---------------------------------------------------------------- synthetic: vMF

def equal_cosine_means(rng, d, k, cos):
    """k unit vectors in R^d with every pairwise cosine equal to `cos`, randomly rotated."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    e, u = q[:, :k].T, q[:, k]
    return np.sqrt(1.0 - cos) * e + np.sqrt(cos) * u


def vmf_mixture(rng, d, sizes, kappas, cos):
    mus = equal_cosine_means(rng, d, len(sizes), cos)
    xs, ys = [], []
    for j, (n, kappa) in enumerate(zip(sizes, kappas)):
        xs.append(scipy.stats.vonmises_fisher(mus[j], kappa).rvs(n, random_state=rng))
        ys.append(np.full(n, j))
    x, y = np.vstack(xs), np.concatenate(ys)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def vmf_sets():
    d = 10
    sizes, kappas = [200] * 5, [10.0] * 5
    x, y = vmf_mixture(np.random.default_rng(SEEDS["vmf_overlap"]), d, sizes, kappas, 0.3)
    out = [("vmf_overlap", [f"f{i}" for i in range(d)], x, y,
            f"synthetic: 5 vMF clusters of 200 on S^9, means pairwise cosine 0.3, kappa 10, "
            f"seed {SEEDS['vmf_overlap']}")]
    sizes, kappas = [500, 250, 125, 75, 50], [6.0, 10.0, 18.0, 28.0, 50.0]
    x, y = vmf_mixture(np.random.default_rng(SEEDS["vmf_unequal"]), d, sizes, kappas, 0.2)
    out.append(("vmf_unequal", [f"f{i}" for i in range(d)], x, y,
                f"synthetic: 5 vMF clusters on S^9, sizes 500/250/125/75/50, kappas "
                f"6/10/18/28/50, means pairwise cosine 0.2, seed {SEEDS['vmf_unequal']}"))
    return out


# ---------------------------------------------------------------- synthetic: activity

RATE_HZ, WINDOW = 50.0, 32
ACTIVITIES = ["rest", "walk", "run", "shake"]
RANGE_G, LSB_G = 4.0, 8.0 / 4096  # +-4 g, 12 bits


def random_rotation(rng, max_tilt):
    """Device-to-world rotation: yaw uniform, tilt of the device's z axis from vertical
    uniform in cos over [cos(max_tilt), 1], tilt azimuth uniform."""
    yaw, az = rng.uniform(0, 2 * np.pi, 2)
    ct = rng.uniform(np.cos(max_tilt), 1.0)
    st = np.sqrt(1.0 - ct * ct)
    rz = lambda a: np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    return rz(az) @ rx @ rz(yaw)


def activity_window(rng, cls):
    """One window (WINDOW x 3, in g, device frame) of activity `cls`."""
    t = np.arange(WINDOW) / RATE_HZ
    body = np.zeros((WINDOW, 3))  # world frame: x forward, y lateral, z up
    if cls == "rest":
        rot = random_rotation(rng, np.pi)  # lying anywhere, any way up
        body += 0.004 * rng.standard_normal((WINDOW, 3))
    elif cls in ("walk", "run"):
        rot = random_rotation(rng, np.radians(50))  # worn: roughly upright
        if cls == "walk":
            f, a = rng.uniform(1.5, 2.3), rng.uniform(0.12, 0.45)
            harm = [1.0, 0.35, 0.1]
        else:
            f, a = rng.uniform(2.2, 3.2), rng.uniform(0.4, 1.3)
            harm = [1.0, 0.6, 0.35]
        p = rng.uniform(0, 2 * np.pi, 5)
        w = 2 * np.pi * f * t
        body[:, 2] = a * sum(h * np.sin((i + 1) * w + p[i]) for i, h in enumerate(harm))
        body[:, 0] = 0.45 * a * np.sin(w + p[3])
        body[:, 1] = 0.25 * a * np.sin(0.5 * w + p[4])
        body += 0.03 * a * rng.standard_normal((WINDOW, 3))
    elif cls == "shake":
        rot = random_rotation(rng, np.pi)
        f, a = rng.uniform(3.5, 8.0), rng.uniform(0.5, 2.0)
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        side = rng.standard_normal(3)
        side -= side.dot(axis) * axis
        side /= np.linalg.norm(side)
        p = rng.uniform(0, 2 * np.pi, 2)
        env = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + p[1])
        body += np.outer(a * env * np.sin(2 * np.pi * f * t + p[0]), axis)
        body += np.outer(0.3 * a * np.sin(4 * np.pi * f * t + p[1]), side)
    else:
        raise ValueError(cls)
    world = body + np.array([0.0, 0.0, 1.0])  # the accelerometer reads +1 g up at rest
    dev = world @ rot  # rows: rot^T @ world
    dev += rng.uniform(-0.03, 0.03, 3) + 0.015 * rng.standard_normal((WINDOW, 3))
    return np.clip(np.round(dev / LSB_G) * LSB_G, -RANGE_G, RANGE_G - LSB_G)


ACTIVITY_FEATURES = [f"{c}_{s}" for c in ("ax", "ay", "az", "mag") for s in ("mean", "std", "min", "max")]


def window_features(win):
    """Per-axis mean, std, min, max, then the same of the magnitude (ACTIVITY_FEATURES)."""
    cols = np.column_stack([win, np.linalg.norm(win, axis=1)])
    return np.concatenate([[c.mean(), c.std(), c.min(), c.max()] for c in cols.T])


def activity_set(seed, sizes):
    rng = np.random.default_rng(seed)
    rows, ys = [], []
    for j, (cls, n) in enumerate(zip(ACTIVITIES, sizes)):
        for _ in range(n):
            rows.append(window_features(activity_window(rng, cls)))
            ys.append(j)
    x, y = np.array(rows), np.array(ys)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def activity_sets():
    out = []
    for name, sizes in [("activity", [300, 300, 300, 300]),
                        ("activity_imbalanced", [1000, 400, 200, 100])]:
        x, y = activity_set(SEEDS[name], sizes)
        out.append((name, ACTIVITY_FEATURES, x, y,
                    f"synthetic accelerometer windows (50 Hz, 32 samples, 3 axes): "
                    f"rest/walk/run/shake = {'/'.join(map(str, sizes))}, seed {SEEDS[name]}"))
    return out


# ---------------------------------------------------------------- main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help=f"a local copy of {SKTIME_WHEEL} (else pip downloads it)")
    ap.add_argument("--out", default=here, help="output directory (default: beside this script)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    sets = sklearn_sets()
    if args.wheel:
        sets += ucr_sets(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sets += ucr_sets(fetch_wheel(tmp))
    sets += vmf_sets()
    sets += activity_sets()

    manifest = []
    for name, names, x, y, source in sets:
        exact = name in ("digits", "iris", "wine", "breast_cancer")
        k = int(y.max()) + 1
        assert set(np.unique(y)) == set(range(k)), name
        file = f"{name}.csv.gz"
        write_csv_gz(os.path.join(args.out, file), names, x, y, fmt_exact if exact else fmt_g)
        size = os.path.getsize(os.path.join(args.out, file))
        counts = np.bincount(y, minlength=k)
        print(f"{file:32s} {x.shape[0]:5d} rows x {x.shape[1]:4d} features, K={k:2d} "
              f"sizes {'/'.join(map(str, counts))}  {size:8d} bytes")
        manifest.append({"name": name, "file": file, "clusters": k, "rows": int(x.shape[0]),
                         "features": int(x.shape[1]),
                         "half": "tune" if name in TUNE else "held_out", "source": source})
    assert TUNE <= {m["name"] for m in manifest}

    doc = {"generated_by": "make_suite.py",
           "versions": {"python": platform.python_version(), "numpy": np.__version__,
                        "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
                        "sktime_wheel": SKTIME_VERSION},
           "sets": manifest}
    with open(os.path.join(args.out, "suite.json"), "w", encoding="ascii", newline="\n") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, m["file"])) for m in manifest)
    print(f"{len(manifest)} sets, {total} bytes gzipped in all; wrote suite.json")


if __name__ == "__main__":
    main()
