#!/usr/bin/env python3
"""Reference baselines on the bundled digits, computed by scikit-learn, for the
side-by-side table in docs/benchmarks.md: k-means on the raw pixels and agglomerative
clustering (Ward).

    host-tools/reference/.venv/bin/python host-tools/reference/baselines.py
"""

import gzip
import os

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    with gzip.open(os.path.join(HERE, "..", "data", "digits.csv.gz"), "rt") as fh:
        header = fh.readline().strip().split(",")
        rows = np.loadtxt(fh, delimiter=",")
    label = header.index("label")
    y = rows[:, label].astype(int)
    x = np.delete(rows, label, axis=1)
    return x, y


def acc(y, p):
    k = max(y.max(), p.max()) + 1
    c = np.zeros((k, k))
    for a, b in zip(y, p):
        c[a, b] += 1
    r, s = linear_sum_assignment(-c)
    return c[r, s].sum() / len(y)


def main():
    x, y = load()
    runs = {
        "k-means, raw pixels (scikit-learn, n_init=10, seed 0)": KMeans(10, n_init=10, random_state=0).fit_predict(x),
        "agglomerative, Ward (scikit-learn)": AgglomerativeClustering(10, linkage="ward").fit_predict(x),
    }
    for name, p in runs.items():
        print(f"{name:55s} ACC {acc(y, p):.3f}  NMI {normalized_mutual_info_score(y, p):.3f}  ARI {adjusted_rand_score(y, p):.3f}")


if __name__ == "__main__":
    main()
