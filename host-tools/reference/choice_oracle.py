#!/usr/bin/env python3
"""How close the choice between the two models comes to the better one, on the suite.

For every set of the suite (host-tools/data/suite/) and seeds 0 ..= --seeds - 1, trains
with `hvae train`'s defaults (and --train-args), K = the number of classes, both models to
the end (`--choice-at 1`: the same models and the same choice as the default's early
looks, docs/benchmarks.md), and writes the model not kept (`--other-out`). Both models
answer every row (`hvae predict`); their partitions are scored against the labels and by
label-free criteria, each of which keeps the partition where it is larger:

- `association`: the tool's own choice score, read from `hvae train`'s output (the
  normalised association with the 20-neighbour graph of the normalised inputs; the tool
  also asks the model as configured to lead by `CHOICE_LEAD` at the end);
- `bic_full`, `bic_diag`: the Bayesian information criterion, negated, of one Gaussian
  per cluster (full or diagonal covariance, 1e-3 added to its diagonal, the cluster's
  share as its weight) on the 8 leading principal components of the standardised
  features: the classification likelihood of a Gaussian mixture;
- `silhouette_x`, `calinski_harabasz_x`: on the standardised features (choose_k.py).

Prints per set the mean ACC of the model as configured, of the GMM candidate, of the one
the tool keeps, of the better of the two on each seed (the oracle: no label-free choice
between the two can do better) and of each criterion's pick; then the means per half.
Last, from the committed results (`results.json`): on how many sets each classical method
and hvae are more than 0.03 below the best classical method on mean ACC or NMI.

Usage (from the repository root, after `cargo build --release -p hvae-host-tools`):
    host-tools/reference/.venv/bin/python host-tools/reference/choice_oracle.py \
        [--hvae target/release/hvae] [--suite DIR] [--sets a,b] [--seeds 5] \
        [--train-args "--gmm-full true"]
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.metrics import calinski_harabasz_score, normalized_mutual_info_score, silhouette_score

from choose_k import acc, read_set

CRITERIA = ["association", "bic_full", "bic_diag", "silhouette_x", "calinski_harabasz_x"]
CHOICE = re.compile(r"kept the (GMM candidate|model as configured): neighbour association "
                    r"([0-9.]+) against ([0-9.]+)")
NEAR = 0.03


def gaussian_bic(z, labels, full):
    n, d = z.shape
    ll, params = 0.0, 0
    for c in np.unique(labels):
        x = z[labels == c]
        if len(x) < 2:
            return -np.inf
        cov = np.cov(x.T, bias=True).reshape(d, d) if full else np.diag(x.var(0))
        _, logdet = np.linalg.slogdet(cov + 1e-3 * np.eye(d))
        ll += len(x) * np.log(len(x) / n) - 0.5 * len(x) * (logdet + d * np.log(2 * np.pi) + d)
        params += d + (d * (d + 1) // 2 if full else d) + 1
    return ll - 0.5 * params * np.log(n)


def predict(hvae, model, data, out):
    subprocess.run([hvae, "predict", "--model", model, "--data", data, "--columns", "label",
                    "--out", out], check=True, capture_output=True)
    return np.loadtxt(out, skiprows=1, dtype=int, ndmin=1)


def far_counts(results):
    counts = {}
    for s in results["sets"]:
        ba, bn = s["best_acc"]["value"], s["best_nmi"]["value"]
        rows = dict(s["classical"])
        rows["hvae"] = {"acc": s["acc"]["mean"], "nmi": s["nmi"]["mean"]}
        for m, v in rows.items():
            far = v["acc"] < ba - NEAR or v["nmi"] < bn - NEAR
            counts.setdefault(m, []).extend([s["name"]] if far else [])
    return counts


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hvae", default="target/release/hvae")
    p.add_argument("--suite", default=os.path.join(here, "..", "data", "suite"))
    p.add_argument("--sets", default="")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--train-args", default="")
    a = p.parse_args()
    manifest = json.load(open(os.path.join(a.suite, "suite.json")))
    sets = [s for s in manifest["sets"] if not a.sets or s["name"] in a.sets.split(",")]
    columns = ["plain", "candidate", "kept", "oracle"] + CRITERIA
    halves = {}
    print("set | half | mean ACC: " + " / ".join(columns))
    with tempfile.TemporaryDirectory() as tmp:
        for s in sets:
            path = os.path.join(a.suite, s["file"])
            _, x, y = read_set(path)
            sd = x.std(0)
            z = (x - x.mean(0)) / np.where(sd > 0, sd, 1)
            _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
            pcs = z @ vt[: min(8, z.shape[1])].T
            picks = {c: [] for c in columns}
            for seed in range(a.seeds):
                kept, other = os.path.join(tmp, "kept.hvae"), os.path.join(tmp, "other.hvae")
                r = subprocess.run(
                    [a.hvae, "train", "--data", path, "--clusters", str(s["clusters"]),
                     "--seed", str(seed), "--choice-at", "1", "--out", kept, "--other-out",
                     other] + shlex.split(a.train_args),
                    check=True, capture_output=True, text=True)
                m = CHOICE.search(r.stdout)
                gmm_kept = m.group(1) == "GMM candidate"
                kept_score, other_score = float(m.group(2)), float(m.group(3))
                lk = predict(a.hvae, kept, path, os.path.join(tmp, "k.csv"))
                lo = predict(a.hvae, other, path, os.path.join(tmp, "o.csv"))
                (plain, sp), (cand, sc) = (((lo, other_score), (lk, kept_score)) if gmm_kept
                                           else ((lk, kept_score), (lo, other_score)))
                score = {"association": (sp, sc)}
                for name, f in [
                    ("bic_full", lambda l: gaussian_bic(pcs, l, True)),
                    ("bic_diag", lambda l: gaussian_bic(pcs, l, False)),
                    ("silhouette_x", lambda l: silhouette_score(z, l) if l.max() > l.min() else -1),
                    ("calinski_harabasz_x",
                     lambda l: calinski_harabasz_score(z, l) if l.max() > l.min() else 0),
                ]:
                    score[name] = (f(plain), f(cand))
                ap, ac = acc(y, plain), acc(y, cand)
                picks["plain"].append(ap)
                picks["candidate"].append(ac)
                picks["kept"].append(ac if gmm_kept else ap)
                picks["oracle"].append(max(ap, ac))
                for c in CRITERIA:
                    picks[c].append(ac if score[c][1] > score[c][0] else ap)
                print(f"  {s['name']} seed {seed}: plain {ap:.3f} / "
                      f"{normalized_mutual_info_score(y, plain):.3f}, candidate {ac:.3f} / "
                      f"{normalized_mutual_info_score(y, cand):.3f}, kept "
                      f"{'candidate' if gmm_kept else 'plain'}", flush=True)
            means = [float(np.mean(picks[c])) for c in columns]
            halves.setdefault(s["half"], []).append(means)
            print(f"{s['name']} | {s['half']} | " + " / ".join(f"{v:.3f}" for v in means),
                  flush=True)
    for half, rows in halves.items():
        print(f"{half} ({len(rows)} sets) | " + " / ".join(
            f"{c} {v:.3f}" for c, v in zip(columns, np.mean(rows, axis=0))))
    results = os.path.join(a.suite, "results.json")
    print(f"more than {NEAR} below the best classical method on mean ACC or NMI "
          "(the committed results):")
    for m, names in sorted(far_counts(json.load(open(results))).items(), key=lambda kv: len(kv[1])):
        print(f"{m} | {len(names)} | {', '.join(names)}")


if __name__ == "__main__":
    sys.exit(main())
