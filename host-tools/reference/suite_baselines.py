#!/usr/bin/env python3
"""Classical clustering baselines of scikit-learn on every set of the clustering quality
suite (host-tools/data/suite/suite.json), written to host-tools/data/suite/baselines.json
and printed as a table.

Normalisation (the same for every method): each feature is standardised to zero mean and
unit standard deviation over the set (sklearn.preprocessing.StandardScaler; a constant
feature stays 0). The labels are never seen by a method; K is the manifest's `clusters`.

Methods (on the standardised features):

- `kmeans`: k-means, k-means++ initialisation, n_init=10.
- `spherical_kmeans`: each standardised row normalised to unit length, then the same
  k-means (Euclidean k-means on unit vectors: the spherical k-means of cosine
  similarity, up to the centres' normalisation).
- `gmm`: Gaussian mixture, full covariance if rows >= 10 * features, else diagonal;
  reg_covar=1e-4, n_init=3, k-means initialisation.
- `ward`: agglomerative clustering, Ward linkage (deterministic: one run).
- `spectral`: spectral clustering, affinity nearest_neighbors with n_neighbors=10,
  assign_labels='cluster_qr' (ARPACK eigensolver; the seed sets its start vector).

Every method but Ward runs with random_state = 0, 1, 2, 3, 4; for each method the mean,
min and max over the runs of ACC (best one-to-one matching of clusters to classes,
Hungarian algorithm: scipy.optimize.linear_sum_assignment), NMI
(sklearn normalized_mutual_info_score, arithmetic mean) and ARI (adjusted_rand_score)
are reported, rounded to 4 decimals. A method that fails on a set is recorded as null.
BLAS and OpenMP run on one thread, so the output is the same from run to run.

Usage:
    host-tools/reference/.venv/bin/python host-tools/reference/suite_baselines.py \
        [--suite DIR] [--out FILE] [--sets name,name,...]

Your own labelled data (CSV, plain or gzipped, with a `label` column of integers), for
`hvae suite --data FILE... --baselines FILE`: each file is a set named after its file
(without `.gz` and the extension), K = its number of distinct labels:
    host-tools/reference/.venv/bin/python host-tools/reference/suite_baselines.py \
        --data mine.csv [other.csv.gz ...] [--out baselines.json]
"""

import argparse
import gzip
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import scipy
import sklearn
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "..", "data", "suite")
SEEDS = [0, 1, 2, 3, 4]

NORMALISATION = ("each feature standardised to zero mean and unit standard deviation over "
                 "the set (sklearn StandardScaler); spherical_kmeans then normalises each "
                 "row to unit length")

METHODS = {
    "kmeans": "KMeans(K, init='k-means++', n_init=10), seeds 0-4",
    "spherical_kmeans": "rows normalised to unit length, then KMeans(K, n_init=10), seeds 0-4",
    "gmm": "GaussianMixture(K, covariance 'full' if rows >= 10*features else 'diag', "
           "reg_covar=1e-4, n_init=3), seeds 0-4",
    "ward": "AgglomerativeClustering(K, linkage='ward'), deterministic, one run",
    "spectral": "SpectralClustering(K, affinity='nearest_neighbors', n_neighbors=10, "
                "assign_labels='cluster_qr'), seeds 0-4",
}


def load(path):
    """Features and class indices `0..K` (in the order of the label values) of a CSV
    with a header and a `label` column, gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="ascii") as fh:
        header = fh.readline().strip().split(",")
        rows = np.loadtxt(fh, delimiter=",", ndmin=2)
    if "label" not in header:
        sys.exit(f"{path}: no label column")
    label = header.index("label")
    classes = np.unique(rows[:, label].astype(int), return_inverse=True)[1]
    return np.delete(rows, label, axis=1), classes.reshape(-1)


def set_name(path):
    """A data file's set name, as `hvae suite --data` gives it: the file name without
    `.gz` and then its extension."""
    name = os.path.basename(path)
    name = name[: -len(".gz")] if name.endswith(".gz") else name
    return os.path.splitext(name)[0]


def acc(y, p):
    """Accuracy under the best one-to-one matching of clusters to classes."""
    c = np.zeros((y.max() + 1, p.max() + 1))
    np.add.at(c, (y, p), 1)
    r, s = linear_sum_assignment(-c)
    return c[r, s].sum() / len(y)


def run(method, z, k, seed):
    n, d = z.shape
    if method == "kmeans":
        return KMeans(k, init="k-means++", n_init=10, random_state=seed).fit_predict(z)
    if method == "spherical_kmeans":
        u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return KMeans(k, init="k-means++", n_init=10, random_state=seed).fit_predict(u)
    if method == "gmm":
        cov = "full" if n >= 10 * d else "diag"
        g = GaussianMixture(k, covariance_type=cov, reg_covar=1e-4, n_init=3, random_state=seed)
        return g.fit(z).predict(z)
    if method == "ward":
        return AgglomerativeClustering(k, linkage="ward").fit_predict(z)
    if method == "spectral":
        return SpectralClustering(k, affinity="nearest_neighbors", n_neighbors=10,
                                  assign_labels="cluster_qr", random_state=seed).fit_predict(z)
    raise ValueError(method)


def stats(v):
    return {"mean": round(float(np.mean(v)), 4), "min": round(float(np.min(v)), 4),
            "max": round(float(np.max(v)), 4)}


def evaluate(method, z, y, k):
    scores = {"acc": [], "nmi": [], "ari": []}
    for seed in ([None] if method == "ward" else SEEDS):
        p = run(method, z, k, seed)
        scores["acc"].append(acc(y, p))
        scores["nmi"].append(normalized_mutual_info_score(y, p, average_method="arithmetic"))
        scores["ari"].append(adjusted_rand_score(y, p))
    return {m: stats(v) for m, v in scores.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default=SUITE, help="directory holding suite.json")
    ap.add_argument("--out", help="output JSON (default: baselines.json in the suite directory)")
    ap.add_argument("--sets", help="comma-separated subset of set names")
    ap.add_argument("--data", nargs="+", metavar="FILE",
                    help="your own labelled CSV files instead of the suite's sets "
                         "(default --out: baselines.json in the current directory)")
    args = ap.parse_args()
    if args.data:
        out = args.out or "baselines.json"
        sets = [{"name": set_name(f), "file": os.path.abspath(f), "half": "user"}
                for f in args.data]
        if len({s["name"] for s in sets}) < len(sets):
            sys.exit("two files with the same name: the sets are named after their files")
    else:
        out = args.out or os.path.join(args.suite, "baselines.json")
        with open(os.path.join(args.suite, "suite.json"), encoding="utf-8") as fh:
            sets = json.load(fh)["sets"]
    if args.sets:
        wanted = args.sets.split(",")
        sets = [s for s in sets if s["name"] in wanted]

    result = {}
    t_all = time.perf_counter()
    short = {"kmeans": "km", "spherical_kmeans": "skm", "gmm": "gmm", "ward": "ward",
             "spectral": "spec"}
    print(f"{'set':24s} {'half':8s} {'n':>5s} {'d':>4s} {'K':>2s}  "
          + "  ".join(f"{short[m]:>11s}" for m in METHODS) + "   (ACC/NMI means)  s")
    with threadpool_limits(limits=1):
        for s in sets:
            t0 = time.perf_counter()
            x, y = load(os.path.join(args.suite, s["file"]))
            k = int(y.max()) + 1
            assert s.get("clusters", k) == k, s["name"]
            assert x.shape == (s.get("rows", x.shape[0]), s.get("features", x.shape[1])), s["name"]
            z = StandardScaler().fit_transform(x)
            res = {}
            for method in METHODS:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res[method] = evaluate(method, z, y, k)
                except Exception as e:  # noqa: BLE001 -- one failure must not stop the suite
                    print(f"  {s['name']}: {method} failed: {type(e).__name__}: {e}", file=sys.stderr)
                    res[method] = None
            result[s["name"]] = res
            cells = ["       null" if res[m] is None else
                     f"{res[m]['acc']['mean']:.3f}/{res[m]['nmi']['mean']:.3f}" for m in METHODS]
            print(f"{s['name']:24s} {s.get('half', 'user'):8s} {x.shape[0]:5d} {x.shape[1]:4d} {k:2d}  "
                  + "  ".join(cells) + f"  {time.perf_counter() - t0:5.1f}", flush=True)

    doc = {"normalisation": NORMALISATION,
           "methods": METHODS,
           "versions": {"python": platform.python_version(), "numpy": np.__version__,
                        "scikit-learn": sklearn.__version__, "scipy": scipy.__version__},
           "sets": result}
    with open(out, "w", encoding="ascii", newline="\n") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print(f"wrote {out} ({len(result)} sets, {time.perf_counter() - t_all:.1f} s)")


if __name__ == "__main__":
    main()
