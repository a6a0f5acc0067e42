#!/usr/bin/env python3
"""Do label-free criteria pick the better of several seeds? Measured on the quality suite.

For every chosen set of the suite (host-tools/data/suite/), trains one model per seed with
`hvae train`'s defaults and K = the number of classes (on the set without its label
column), answers every row with `hvae predict`, and scores each seed's partition with the
criteria of choose_k.py (silhouette on the mean directions and on the standardised
features, Calinski-Harabasz, Davies-Bouldin negated, the neighbours' kappa on either) and
with the within-cluster sum of squares of the standardised features, negated (the k-means
objective). Prints, per set, each seed's ACC beside its scores, then per criterion the
Spearman rank correlation of its score with ACC over the seeds and the ACC of the seed it
ranks first, beside the mean and the best seed.

Usage (from the repository root, after `cargo build --release -p hvae-host-tools`):
    host-tools/reference/.venv/bin/python host-tools/reference/criteria_seeds.py \
        [--hvae target/release/hvae] [--suite DIR] [--sets digits] [--seeds 12]
"""

import argparse
import os
import sys
import tempfile

import numpy as np
from scipy.stats import spearmanr

from choose_k import CRITERIA, acc, partition, prepare, scores

WITHIN = "within_ss_x"


def within_ss(xs, labels):
    return -sum(((xs[labels == c] - xs[labels == c].mean(0)) ** 2).sum()
                for c in np.unique(labels))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hvae", default="target/release/hvae")
    p.add_argument("--suite", default=os.path.join(here, "..", "data", "suite"))
    p.add_argument("--sets", default="digits")
    p.add_argument("--seeds", type=int, default=12)
    a = p.parse_args()
    criteria = CRITERIA + [WITHIN]
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.sets.split(","):
            path = os.path.join(a.suite, name + ".csv.gz")
            y, xs, nn_x, plain = prepare(path, tmp)
            k = len(set(y.tolist()))
            accs, table = [], {c: [] for c in criteria}
            for seed in range(a.seeds):
                labels, mu = partition(a.hvae, plain, path, k, seed, tmp)
                labels = np.unique(labels, return_inverse=True)[1]
                s = scores(xs, nn_x, mu, labels) if labels.max() >= 1 else {
                    c: -np.inf for c in CRITERIA}
                s[WITHIN] = within_ss(xs, labels)
                accs.append(acc(y, labels))
                for c in criteria:
                    table[c].append(s[c])
                print(f"{name} seed {seed}: ACC {accs[-1]:.3f}, " +
                      ", ".join(f"{c} {s[c]:.4g}" for c in criteria), flush=True)
            accs = np.array(accs)
            print(f"{name}: mean ACC {accs.mean():.3f}, best seed {accs.max():.3f}")
            print("criterion | rank correlation with ACC | ACC of the seed it ranks first")
            for c in criteria:
                v = np.array(table[c])
                # Undefined where every seed scores alike or reaches the same ACC.
                rho = (f"{spearmanr(v, accs).statistic:+.2f}"
                       if np.ptp(v) > 0 and np.ptp(accs) > 0 else "-")
                print(f"{c} | {rho} | {accs[int(np.argmax(v))]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
