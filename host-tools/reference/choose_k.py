#!/usr/bin/env python3
"""Label-free criteria for the number of clusters, measured on the quality suite.

For every set of the suite (host-tools/data/suite/) and K = 2 ..= --max-clusters, trains
one model with `hvae train`'s defaults (seed --seed) on the set without its label column,
answers every row with `hvae predict` (label and mean direction), and scores the
partition with each criterion below; a criterion picks the K where it is largest. Prints,
per set, the K each criterion picks, then per criterion how often it picks the number of
classes and the mean ACC / NMI of the models it picks. `hvae train --clusters auto` uses
`silhouette_mu`.

Criteria (none sees the labels):

- `silhouette_mu`: silhouette of the labels on the mean directions, cosine distance.
- `silhouette_x`: silhouette on the standardised features, Euclidean.
- `calinski_harabasz_x`, `davies_bouldin_x` (negated: larger is better): on the
  standardised features.
- `neighbours_x`, `neighbours_mu`: the share of each row's 20 nearest neighbours (the
  standardised features, Euclidean; the mean directions, cosine) in its cluster, as a
  kappa against the share a partition of the same cluster sizes gets by chance,
  `(a - sum p_k^2) / (1 - sum p_k^2)`.

Usage (from the repository root, after `cargo build --release -p hvae-host-tools`):
    host-tools/reference/.venv/bin/python host-tools/reference/choose_k.py \
        [--hvae target/release/hvae] [--suite DIR] [--sets a,b] [--seed 0] [--max-clusters 10]
"""

import argparse
import csv
import gzip
import os
import subprocess
import sys
import tempfile

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.neighbors import NearestNeighbors

CRITERIA = [
    "silhouette_mu",
    "silhouette_x",
    "calinski_harabasz_x",
    "davies_bouldin_x",
    "neighbours_x",
    "neighbours_mu",
]


def read_set(path):
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    li = header.index("label")
    x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body])
    y = np.array([int(r[li]) for r in body])
    return [h for j, h in enumerate(header) if j != li], x, y


def acc(y, labels):
    k = max(y.max(), labels.max()) + 1
    c = np.zeros((k, k))
    np.add.at(c, (y, labels), 1)
    r, col = linear_sum_assignment(-c)
    return c[r, col].sum() / len(y)


def neighbour_kappa(nn, labels):
    same = (labels[nn[:, 1:]] == labels[:, None]).mean()
    p = np.bincount(labels) / len(labels)
    chance = (p**2).sum()
    return (same - chance) / (1 - chance)


def scores(xs, nn_x, mu, labels):
    nn_mu = (
        NearestNeighbors(n_neighbors=21, metric="cosine")
        .fit(mu)
        .kneighbors(mu, return_distance=False)
    )
    return {
        "silhouette_mu": silhouette_score(mu, labels, metric="cosine"),
        "silhouette_x": silhouette_score(xs, labels),
        "calinski_harabasz_x": calinski_harabasz_score(xs, labels),
        "davies_bouldin_x": -davies_bouldin_score(xs, labels),
        "neighbours_x": neighbour_kappa(nn_x, labels),
        "neighbours_mu": neighbour_kappa(nn_mu, labels),
    }


def write_unlabelled(header, x, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(x.tolist())


def prepare(path, tmp):
    """A suite set's labels, its standardised features, each row's 20 nearest
    neighbours there (the row first), and the path of a copy without the label column
    (written in `tmp`) to train on."""
    header, x, y = read_set(path)
    sd = x.std(0)
    xs = (x - x.mean(0)) / np.where(sd > 0, sd, 1)
    nn_x = NearestNeighbors(n_neighbors=21).fit(xs).kneighbors(xs, return_distance=False)
    plain = os.path.join(tmp, "data.csv")
    write_unlabelled(header, x, plain)
    return y, xs, nn_x, plain


def partition(hvae, plain, data_path, k, seed, tmp):
    model = os.path.join(tmp, "model.hvae")
    answers = os.path.join(tmp, "answers.csv")
    train = [hvae, "train", "--data", plain, "--clusters", str(k), "--seed", str(seed)]
    subprocess.run(train + ["--out", model, "--quiet"], check=True, capture_output=True)
    predict = [hvae, "predict", "--model", model, "--data", data_path]
    subprocess.run(predict + ["--columns", "label,mu", "--out", answers], check=True,
                   capture_output=True)
    with open(answers, newline="") as f:
        rows = list(csv.reader(f))
    a = np.array(rows[1:], dtype=float)
    return a[:, 0].astype(int), a[:, 1:]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hvae", default="target/release/hvae")
    p.add_argument("--suite", default=os.path.join(here, "..", "data", "suite"))
    p.add_argument("--sets", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-clusters", type=int, default=10)
    a = p.parse_args()
    names = sorted(
        f[: -len(".csv.gz")] for f in os.listdir(a.suite) if f.endswith(".csv.gz")
    )
    if a.sets:
        names = [n for n in names if n in a.sets.split(",")]
    picked = {c: [] for c in CRITERIA}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = os.path.join(a.suite, name + ".csv.gz")
            y, xs, nn_x, plain = prepare(path, tmp)
            runs = {}
            for k in range(2, a.max_clusters + 1):
                labels, mu = partition(a.hvae, plain, path, k, a.seed, tmp)
                labels = np.unique(labels, return_inverse=True)[1]
                if labels.max() < 1:
                    continue
                runs[k] = (scores(xs, nn_x, mu, labels), acc(y, labels),
                           normalized_mutual_info_score(y, labels))
            classes = len(set(y.tolist()))
            line = []
            for c in CRITERIA:
                k = max(runs, key=lambda k: runs[k][0][c])
                picked[c].append((k == classes, runs[k][1], runs[k][2]))
                line.append(f"{c} {k}")
            print(f"{name} ({classes} classes): " + ", ".join(line), flush=True)
    print("criterion | number of classes found | mean ACC | mean NMI")
    for c in CRITERIA:
        r = picked[c]
        found = sum(f for f, _, _ in r)
        print(f"{c} | {found} of {len(r)} | {np.mean([v for _, v, _ in r]):.3f} | "
              f"{np.mean([v for _, _, v in r]):.3f}")


if __name__ == "__main__":
    sys.exit(main())
