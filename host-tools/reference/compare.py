#!/usr/bin/env python3
"""Compares the Rust core's outputs, loss parts and gradients with the independent
reference (`hvae_ref.py`) on comparison cases written by `host-tools/tests/reference.rs`.

    python compare.py CASE.json [CASE.json ...]

Each case names a weight blob (written by the core), the batch (raw inputs, labels,
pairs, the previous moving-average marginal), the loss configuration and update scope,
the recorded posterior draws, and what the core computed: inference outputs in f32 and
f64, loss parts, the new marginal and the scope's gradients, each in f64 and f32 (the
f32 run uses the same parameters, inputs and draws rounded to f32).

A table per case and a summary of the worst errors are printed; the exit status is 1
when any check fails:

* outputs (mu, kappa, probs, cosine): max abs error <= 1e-5 (f32 core vs f64 reference),
  <= 1e-9 (f64 core);
* labels: equal, except where the reference's two top probabilities tie (|dp| <= 1e-9);
* loss parts (and the new marginal p_bar): relative error <= 1e-6 (f64 core), <= 1e-4
  (f32 core);
* gradients, per tensor: ||g_core - g_ref|| / ||g_ref|| <= 1e-4 (f64 and f32 core).

Relative errors divide by max(|ref|, 1e-12), so an exactly zero reference must be
matched to 1e-12 absolute.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hvae_ref  # noqa: E402

TOL = {
    "out_f32": 1e-5,
    "out_f64": 1e-9,
    "loss_f64": 1e-6,
    "loss_f32": 1e-4,
    "grad_f64": 1e-4,
    "grad_f32": 1e-4,
}
TIE = 1e-9
FLOOR = 1e-12
PARTS = ("recon", "kl", "consistency", "entropy", "balance", "supervised", "total")


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), FLOOR))


class Worst:
    """Largest error seen per quantity, with where it was seen."""

    def __init__(self):
        self.v = {}

    def see(self, key, err, where):
        if key not in self.v or err > self.v[key][0]:
            self.v[key] = (err, where)


def compare_outputs(ref, got, tol, tag, case, worst, fails, lines):
    errs = {}
    for key in ("mu", "kappa", "probs", "cosine"):
        e = float(np.max(np.abs(np.asarray(got[key], dtype=np.float64) - ref[key])))
        errs[key] = e
        worst.see(f"outputs {tag} {key} (max abs)", e, case)
        if not e <= tol:
            fails.append(f"{case}: {tag} {key} max abs error {e:.3e} > {tol:g}")
    lines.append(f"  outputs {tag}: " + "  ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    labels = np.asarray(got["label"], dtype=int)
    bad, ties = 0, 0
    for i, (a, b) in enumerate(zip(labels, ref["label"])):
        if a == b:
            continue
        pr = ref["probs"][i]
        if abs(pr[a] - pr[b]) <= TIE:
            ties += 1
        else:
            bad += 1
            fails.append(f"{case}: {tag} label of row {i} is {a}, reference {b} "
                         f"(p {pr[a]:.6f} vs {pr[b]:.6f})")
    lines.append(f"  labels {tag}: {len(labels) - bad - ties}/{len(labels)} equal"
                 + (f", {ties} exact ties" if ties else ""))


def run_case(path, worst, fails):
    with open(path) as f:
        case = json.load(f)
    name = case["name"]
    lines = [f"== {name}: {case['description']}"]
    blob = os.path.join(os.path.dirname(os.path.abspath(path)), case["blob"])
    model = hvae_ref.load_blob_file(blob)
    if model.crc != case["crc"]:
        fails.append(f"{name}: blob CRC {model.crc:#010x} != core's {case['crc']:#010x}")
    rust = case["rust"]

    # Inference.
    x = np.asarray(case["inputs"], dtype=np.float64)
    ref_seg = hvae_ref.segment(model, x)
    compare_outputs(ref_seg, rust["segment_f32"], TOL["out_f32"], "f32", name, worst, fails,
                    lines)
    compare_outputs(ref_seg, rust["segment_f64"], TOL["out_f64"], "f64", name, worst, fails,
                    lines)

    # Loss and gradients.
    cfg = case["config"]
    scope = case["scope"]
    batch = hvae_ref.make_batch(case["inputs"], case["labels"], case["pairs"],
                                case["p_bar_prev"], model.k)
    draws = hvae_ref.make_draws(case["draws"])
    parts, p_bar, grads = hvae_ref.loss_and_grad(model, batch, cfg, scope, draws)
    lines.append(f"  {'part':<12}{'reference':>16}{'core f64':>16}{'rel f64':>10}"
                 f"{'core f32':>16}{'rel f32':>10}")
    for key in PARTS:
        r = parts[key]
        g64, g32 = rust["loss_f64"][key], rust["loss_f32"][key]
        e64, e32 = rel(g64, r), rel(g32, r)
        note = ""
        if key == "entropy" and cfg["entropy"] == 0.0 and g64 == 0.0 and g32 == 0.0:
            # The core forms the per-sample entropy only when lambda != 0 and reports 0
            # otherwise (it does not enter the total then); not an error of the loss.
            note = "  (not formed by the core at lambda = 0)"
            e64 = e32 = float("nan")
        else:
            worst.see(f"loss {key} f64 (rel)", e64, name)
            worst.see(f"loss {key} f32 (rel)", e32, name)
            if not e64 <= TOL["loss_f64"]:
                fails.append(f"{name}: loss {key} f64 rel error {e64:.3e}")
            if not e32 <= TOL["loss_f32"]:
                fails.append(f"{name}: loss {key} f32 rel error {e32:.3e}")
        lines.append(f"  {key:<12}{r:>16.9g}{g64:>16.9g}{e64:>10.1e}{g32:>16.9g}{e32:>10.1e}"
                     + note)
    for tag in ("f64", "f32"):
        e = rel(rust[f"p_bar_{tag}"], p_bar)
        worst.see(f"p_bar {tag} (rel)", e, name)
        if not e <= TOL[f"loss_{tag}"]:
            fails.append(f"{name}: p_bar {tag} rel error {e:.3e}")
    lines.append(f"  {'tensor':<24}{'|g_ref|':>11}{'rel f64':>10}{'rel f32':>10}")
    names = model.names_in_scope(scope)
    for tag in ("f64", "f32"):
        got = set(rust[f"grads_{tag}"])
        if got != set(names):
            fails.append(f"{name}: core {tag} gradient tensors {sorted(got)} != scope's "
                         f"{names}")
    all_ref, all64, all32 = [], [], []
    for n in names:
        gr = np.asarray(grads[n], dtype=np.float64).ravel()
        g64 = np.asarray(rust["grads_f64"].get(n, np.zeros_like(gr)), dtype=np.float64)
        g32 = np.asarray(rust["grads_f32"].get(n, np.zeros_like(gr)), dtype=np.float64)
        if g64.shape != gr.shape or g32.shape != gr.shape:
            fails.append(f"{name}: gradient {n} has {g64.size}/{g32.size} values, "
                         f"reference {gr.size}")
            continue
        e64, e32 = rel(g64, gr), rel(g32, gr)
        worst.see("grad f64 (rel, per tensor)", e64, f"{name} {n}")
        worst.see("grad f32 (rel, per tensor)", e32, f"{name} {n}")
        for tag, e in (("f64", e64), ("f32", e32)):
            if not e <= TOL[f"grad_{tag}"]:
                fails.append(f"{name}: gradient {n} {tag} rel error {e:.3e}")
        lines.append(f"  {n:<24}{np.linalg.norm(gr):>11.3e}{e64:>10.1e}{e32:>10.1e}")
        all_ref.append(gr)
        all64.append(g64)
        all32.append(g32)
    if all_ref:
        r, a, b = (np.concatenate(v) for v in (all_ref, all64, all32))
        e64, e32 = rel(a, r), rel(b, r)
        worst.see("grad f64 (rel, whole scope)", e64, name)
        worst.see("grad f32 (rel, whole scope)", e32, name)
        lines.append(f"  {'(whole scope)':<24}{np.linalg.norm(r):>11.3e}{e64:>10.1e}"
                     f"{e32:>10.1e}")
    print("\n".join(lines))
    sys.stdout.flush()


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    worst, fails = Worst(), []
    for path in paths:
        try:
            run_case(path, worst, fails)
        except Exception as e:  # a broken case is a failure, with its reason
            fails.append(f"{path}: {type(e).__name__}: {e}")
    print("\n== worst errors over all cases (quantity: error, where)")
    for key in sorted(worst.v):
        e, where = worst.v[key]
        print(f"  {key:<34} {e:.2e}   {where}")
    if fails:
        print(f"\nFAILED: {len(fails)} check(s)")
        for f in fails:
            print(f"  {f}")
        return 1
    print(f"\nOK: {len(paths)} case(s), every check within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
