#!/usr/bin/env python3
"""Train an hvae model in PyTorch, on one process or many, with ``hvae train``'s loss and
schedule, and write it for ``hvae import``.

One process, or ``N`` under ``torchrun`` (``DistributedDataParallel``, gloo on CPU)::

    python train_torch.py --data rows.csv.gz --clusters 10 --out model.safetensors
    torchrun --nproc_per_node 2 train_torch.py --data rows.csv.gz --clusters 10 \\
        --out model.safetensors
    hvae import --safetensors model.safetensors --out model.hvae

``torchrun`` is ``python -m torch.distributed.run``: run it with the Python that has
``torch_export.py``'s packages. (Debian's torch 1.13 under Python 3.11 fails in the
launcher with its default redirection; ``--redirects 1 --tee 1`` works around it.) Across
machines, ``torchrun``'s ``--nnodes`` and ``--rdzv_endpoint`` as usual; every process reads
the data file (a ``.npy`` is memory-mapped, only a process's own rows read). The options
and their defaults are ``hvae train``'s (but ``--kmeans-restarts``: below); ``--threads``
(1) is PyTorch's per process.

The same as ``hvae train`` (``host-tools/src/train.rs``, ``src/train/loss.rs``):

* the model (:class:`torch_export.HvaeModule`) and its initialisation: He-uniform weights
  for ReLU layers (Glorot-uniform for tanh), zero biases, ``kappa = 10`` at the start,
  centres standard normal, ``kappa_s = 10``, uniform mixing weights;
* the input normalisation rule of ``src/infer/normalise.rs`` (offset the mean, scale one over
  ``max(sd, max |x - mean| / 10)``, 1 for a constant feature), fitted on every row of
  every shard (sums all-reduced);
* the loss: ``recon + beta KL + gamma (consistency - eta H(p_bar)) + zeta contrast`` with
  the Gaussian
  reconstruction of the normalised inputs (``sigma = 1``; Bernoulli: of the raw inputs),
  the Power Spherical posterior's KL to the uniform prior, ``consistency = mean over
  pairs of -ln(p_i . p_j)`` on the cluster probabilities at the mean directions, and the
  entropy of ``p_bar``, the mean probabilities of the batch; ``contrast`` the neighbour
  contrast (InfoNCE on the mean directions: each pair's rows the other's positive, the
  step's other rows the negatives, every pair both ways, temperature ``--temperature``);
* the schedule: ``--warmup`` epochs of the VAE alone (``gamma = 0``; ``--batch / 2``
  anchors a step and their neighbours with the contrast on, else ``--batch`` anchors),
  then the centres from spherical k-means++ on the mean directions of every row
  (greedy seeding with ``2 + floor(ln K)`` candidates, Lloyd iterations, best of
  ``--kmeans-restarts``; mixing weights reset), then joint epochs on ``--batch / 2``
  anchors a step, each paired with one of its ``--neighbours`` nearest neighbours drawn
  at random (by default nearest by the sum of the ranks under the raw cosine and under
  the normalised cosine); Adam (0.9, 0.999, 1e-8) with the gradient clipped to norm 10;
  centres stored at unit norm; at most ``--max-steps`` steps in all (3500; 0: the
  epochs), both phases shortened in proportion on a data set whose epochs give more
  (``FitConfig::schedule``: the digits' 580 + 4560 steps become 395 + 3105).

What differs:

* the random numbers (PyTorch's and NumPy's generators, not the core's): the same seed
  does not give the same model as ``hvae train``;
* with ``N`` processes the rows are dealt out (row ``i`` to process ``i mod N``), each
  process mines its neighbours within its own shard (``O((n/N)^2)`` each instead of
  ``O(n^2)``) and takes ``--batch / N`` rows a step; DDP averages the gradients and the
  balance term's ``p_bar`` is all-reduced, so a step is one step on the whole batch; the
  contrast's negatives are the process's own rows of the step (``--batch / N - 2``, not
  ``--batch - 2``);
* the centres from spherical k-means on the mean directions alone (``hvae train --init
  latent``, the best of ``--kmeans-restarts``, 1 here); ``hvae train``'s default
  (``--init selected``, 5 runs) picks among k-means partitions of the mean directions and
  of the normalised inputs the one that agrees best with the neighbour lists;
* the Power Spherical posterior only (``hvae train``'s default): its sampler here is
  ``w = 2T - 1`` with ``T = G_a / (G_a + G_b)``, ``G`` Gamma variates with PyTorch's
  reparameterised gradient, then a uniform tangent direction and the Householder
  reflection onto ``mu``; ``python train_torch.py sampler-check`` prints its moments and
  the KL for comparison with the core's.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from torch_export import (HvaeModule, numpy_to_tensor, read_rows, save_torch,
                          tensor_to_numpy, torch)

if torch is None:  # pragma: no cover - the message is the point
    sys.exit("train_torch.py: PyTorch is not installed (import torch failed)")

import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

#: Global-norm gradient clipping of ``hvae train``.
CLIP = 10.0
#: Smallest probability inside a logarithm: the core's ``max(1e-30, eps^3)`` in f32.
TINY = max(1e-30, float(np.finfo(np.float32).eps) ** 3)
#: Below this spread a feature is constant (scale 1); the largest excursion counts in
#: tenths of the spread (src/infer/normalise.rs).
MIN_SPREAD, SPARSE_RATIO = 1e-6, 10.0


# --- the Power Spherical posterior ---------------------------------------------------

def power_spherical_rsample(mu, kappa):
    """``(z, w)``: a reparameterised draw ``z`` of the Power Spherical law with mean
    directions ``mu`` (``B x M``, unit rows) and concentrations ``kappa`` (``B``), and
    ``w = mu . z``. ``w = 2T - 1``, ``T ~ Beta(alpha, beta)`` with ``alpha = (M-1)/2 +
    kappa``, ``beta = (M-1)/2``, made of two Gamma variates so that ``1 - w`` and
    ``1 + w`` keep their precision; ``z`` is ``(w, sqrt(1 - w^2) v)`` with ``v`` uniform
    on ``S^(M-2)``, reflected by ``H = I - 2 u u^T / u.u``, ``u = e1 - mu``."""
    b, m = mu.shape
    half = (m - 1) / 2.0
    ga = torch._standard_gamma(half + kappa)
    gb = torch._standard_gamma(torch.full_like(kappa, half))
    t, omt = ga / (ga + gb), gb / (ga + gb)
    w = t - omt
    v = torch.randn(b, m - 1, dtype=mu.dtype)
    v = v / v.norm(dim=1, keepdim=True)
    x = torch.cat([w[:, None], 2.0 * (t * omt).sqrt()[:, None] * v], dim=1)
    e1 = torch.zeros_like(mu)
    e1[:, 0] = 1.0
    u = e1 - mu
    uu = (u * u).sum(1, keepdim=True)
    # mu numerically e1: the identity (as the core), not a division by a vanishing u.u.
    flat = uu <= torch.finfo(mu.dtype).eps
    z = x - 2.0 * u * (u * x).sum(1, keepdim=True) / torch.where(flat, torch.ones_like(uu), uu)
    return torch.where(flat, x, z), w


def power_spherical_kl(m, kappa):
    """``KL(PS(mu, kappa) || uniform on S^(M-1))`` (``kappa`` a tensor; computed in
    float64): ``L(alpha, beta) - L(beta, beta) - kappa (psi(alpha + beta) - psi(alpha))``
    with ``L(a, b) = ln Gamma(a + b) - ln Gamma(a)``."""
    k = kappa.double()
    b = (m - 1) / 2.0
    a = b + k
    return (torch.lgamma(a + b) - torch.lgamma(a) - (math.lgamma(2 * b) - math.lgamma(b))
            - k * (torch.digamma(a + b) - torch.digamma(a)))


def sampler_check(argv):
    """``sampler-check --latent M --kappa K1,K2,... [--draws N] [--seed S]``: one JSON line
    per ``kappa`` with the sample mean of ``w = mu . z`` and of ``dw/dkappa`` (by
    autograd) with their standard errors, the largest ``| |z| - 1 |`` and
    ``|mu . z - w|``, and the KL with its derivative."""
    p = argparse.ArgumentParser(prog="train_torch.py sampler-check")
    p.add_argument("--latent", type=int, required=True)
    p.add_argument("--kappa", required=True)
    p.add_argument("--draws", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    m = a.latent
    for k in (float(v) for v in a.kappa.split(",")):
        mu = torch.randn(m, dtype=torch.float64)
        mu = (mu / mu.norm()).expand(a.draws, m).contiguous()
        kappa = torch.full((a.draws,), k, dtype=torch.float64, requires_grad=True)
        z, w = power_spherical_rsample(mu, kappa)
        (dw,) = torch.autograd.grad(w.sum(), kappa)
        kk = torch.tensor(k, dtype=torch.float64, requires_grad=True)
        kl = power_spherical_kl(m, kk)
        (dkl,) = torch.autograd.grad(kl, kk)
        cos_err = ((mu * z).sum(1) - w).abs().max().item()
        norm_err = (z.norm(dim=1) - 1).abs().max().item()
        w, dw = tensor_to_numpy(w.detach()), tensor_to_numpy(dw)
        n = float(a.draws)
        print(json.dumps({
            "latent": m, "kappa": k,
            "mean_w": float(w.mean()), "se_w": float(w.std() / math.sqrt(n)),
            "mean_dw": float(dw.mean()), "se_dw": float(dw.std() / math.sqrt(n)),
            "norm_err": norm_err, "cos_err": cos_err, "kl": kl.item(), "dkl": dkl.item()}))
    return 0


# --- data, normalisation, neighbours ---------------------------------------------------

def load_shard(path, rank, world):
    """``(x, labels)``: the rows ``rank, rank + world, ...`` of a data file. A ``.npy``
    is memory-mapped, so a process reads only its own rows."""
    with open(path, "rb") as f:
        npy = f.read(6) == b"\x93NUMPY"
    if npy:
        x = np.load(path, mmap_mode="r")
        if x.ndim != 2:
            raise ValueError(f"{path}: a .npy data file must be 2-D, not {x.ndim}-D")
        return np.ascontiguousarray(x[rank::world], dtype=np.float32), None
    x, labels = read_rows(path)
    return (np.ascontiguousarray(x[rank::world]),
            None if labels is None else labels[rank::world])


def all_reduce(array, op="sum"):
    """``array`` (float64) summed (``op="sum"``) or maximised (``"max"``) over the
    processes; itself with one process."""
    if not dist.is_initialized():
        return np.asarray(array, dtype=np.float64)
    t = numpy_to_tensor(np.asarray(array, dtype=np.float64))
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor_to_numpy(t)


def fit_normalisation(x):
    """``(offset, scale)`` by the core's rule (``src/infer/normalise.rs``) over the rows of
    every shard: mean; spread ``max(sd, max |x - mean| / 10)``; scale ``1 / spread``,
    or 1 where the spread is at most ``1e-6``."""
    xd = x.astype(np.float64)
    n = all_reduce([len(x)])[0]
    mean = all_reduce(xd.sum(0)) / n
    sd = np.sqrt(all_reduce(((xd - mean) ** 2).sum(0)) / n)
    excursion = all_reduce(np.abs(xd - mean).max(0), "max")
    spread = np.maximum(sd, excursion / SPARSE_RATIO)
    scale = np.where(spread > MIN_SPREAD, 1.0 / np.maximum(spread, MIN_SPREAD), 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def _unit(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _ranks(u, rows):
    """For the rows ``rows`` of ``u`` (unit rows): every other row's rank by cosine,
    nearest 0, ties to the smaller index; the row itself last."""
    sims = u[rows] @ u.T
    sims[np.arange(len(rows)), rows] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(u.shape[0])[None, :], axis=1)
    return ranks


def mine_neighbours(views, k, block=1024):
    """``n x k`` indices of every row's ``k`` nearest other rows (nearest first): by
    cosine for one view, by the smallest sum of the ranks under each view's cosine for
    several (ties to the smaller index), as ``train.rs``'s ``mine_neighbours`` and
    ``mine_neighbours_both``. ``O(n^2 (d + log n))``, ``block`` rows at a time."""
    n = views[0].shape[0]
    k = max(1, min(k, n - 1))
    units = [_unit(v.astype(np.float32)) for v in views]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        total = sum(_ranks(u, rows) for u in units)
        total[np.arange(len(rows)), rows] = np.iinfo(total.dtype).max
        out[rows] = np.argsort(total, axis=1, kind="stable")[:, :k]
    return out


# --- spherical k-means++ ---------------------------------------------------------------

def spherical_kmeans(points, k, iters, rng):
    """``(centres, objective)``: spherical k-means of the rows of ``points`` (float64)
    into ``k`` clusters, as ``src/train/kmeans.rs``: greedy k-means++ seeding (``2 + floor(ln
    k)`` candidates drawn by ``1 - cos`` to the nearest chosen centre, the one leaving the
    smallest total kept), then Lloyd iterations (a point keeps its centre on a tie; an
    empty cluster takes the point farthest from its own centre, from a cluster of two or
    more) until no label changes or ``iters`` run out. ``objective``: mean cosine."""
    x = _unit(points)
    n = len(x)
    trials = 2 + int(math.floor(math.log(k))) if k > 1 else 1
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d = np.maximum(1.0 - x @ centres[0], 0.0)
    for j in range(1, k):
        total = d.sum()
        if total <= 0.0:
            centres[j] = x[rng.integers(n)]
            continue
        cands = np.unique(np.minimum(np.searchsorted(np.cumsum(d), rng.random(trials) * total,
                                                     side="right"), n - 1))
        best = None
        for c in cands:
            dc = np.minimum(d, np.maximum(1.0 - x @ x[c], 0.0))
            if best is None or dc.sum() < best[0]:
                best = (dc.sum(), c, dc)
        centres[j], d = x[best[1]], best[2]
    labels = np.argmax(x @ centres.T, axis=1)
    for _ in range(iters):
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        counts = np.bincount(labels, minlength=k)
        for c in np.flatnonzero(counts == 0):
            own = (x * centres[labels]).sum(1)
            movable = counts[labels] >= 2
            far = np.flatnonzero(movable)[np.argmin(own[movable])]
            counts[labels[far]] -= 1
            sums[labels[far]] -= x[far]
            labels[far], counts[c], sums[c] = c, 1, x[far]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 1e-12, sums / np.where(norms > 0, norms, 1.0), centres)
        cos = x @ centres.T
        best = np.argmax(cos, axis=1)
        keep = cos[np.arange(n), labels] >= cos[np.arange(n), best]
        new = np.where(keep, labels, best)
        changed = (new != labels).any()
        labels = new
        if not changed:
            break
    return centres, float((x * centres[labels]).sum(1).mean())


# --- the model and the loss ------------------------------------------------------------

def init_like_core(module):
    """The core's fresh parameters (``Model::init``): He-uniform weights (ReLU) or
    Glorot-uniform (tanh), zero biases, the concentration head at ``kappa = 10`` (zero
    weight, bias ``softplus^-1(9)``), centres standard normal, ``kappa_s = 10``, uniform
    mixing weights; identity normalisation."""
    with torch.no_grad():
        layers = list(module.encoder) + [module.mu] + list(module.decoder)
        for layer in layers:
            fan_out, fan_in = layer.weight.shape
            limit = math.sqrt(6.0 / fan_in if module.activation == "relu"
                              else 6.0 / (fan_in + fan_out))
            layer.weight.uniform_(-limit, limit)
            layer.bias.zero_()
        module.kappa.weight.zero_()
        module.kappa.bias.fill_(math.log(math.expm1(9.0)))
        module.segmenter.centres.normal_()
        module.segmenter.log_kappa.fill_(math.log(10.0))
        module.segmenter.log_weights.zero_()
        module.norm.offset.zero_()
        module.norm.scale.fill_(1.0)


def _entropy(q):
    return -(q * q.clamp_min(TINY).log()).sum(-1)


class Objective(nn.Module):
    """The loss of one batch (``src/train/loss.rs``), as a module for DDP: every parameter takes
    part in every step (the cluster terms are weighted by ``gamma = 0`` in the warm-up),
    as DDP needs."""

    def __init__(self, model, likelihood, beta, eta, sigma, world, contrast, temperature):
        super().__init__()
        self.model, self.likelihood = model, likelihood
        self.beta, self.eta, self.sigma, self.world = beta, eta, sigma, world
        self.contrast, self.temperature = contrast, temperature

    def forward(self, x, anchors, gamma, rows_in_step):
        """``(total, parts)`` for the rows ``x``: the first ``anchors`` rows paired in
        order with the next ``anchors`` (none when ``len(x) == anchors``).
        ``rows_in_step``: rows of the step over every process."""
        model = self.model
        mu, kappa, p = model(x)
        z, _ = power_spherical_rsample(mu, kappa)
        out = model.decode(z)
        if self.likelihood == "gaussian":
            recon = ((out - model.norm(x)) ** 2).sum(1) / (2.0 * self.sigma ** 2)
        else:
            recon = (nn.functional.softplus(out) - x * out).sum(1)
        recon = recon.mean()
        kl = power_spherical_kl(mu.shape[1], kappa).mean().to(x.dtype)
        if len(x) > anchors:
            pair = (p[:anchors] * p[anchors:2 * anchors]).sum(1)
            consistency = -pair.clamp_min(TINY).log().mean()
        else:
            consistency = torch.zeros((), dtype=x.dtype)
        contrast = torch.zeros((), dtype=x.dtype)
        if self.contrast != 0.0 and len(x) > anchors:
            # Row i's positive is its partner, its negatives every other row of the step.
            logits = mu @ mu.T / self.temperature
            logits = logits.masked_fill(torch.eye(len(x), dtype=torch.bool), float("-inf"))
            partner = torch.cat([torch.arange(anchors, 2 * anchors), torch.arange(anchors)])
            contrast = nn.functional.cross_entropy(logits[:2 * anchors], partner)
        # p_bar over the whole step: this process's sum plus the others' (no gradient);
        # DDP averages gradients over the processes, so this term's is scaled by their
        # number (its value unchanged) to give the gradient of H(p_bar) itself.
        local = p.sum(0)
        others = local.detach()
        if dist.is_initialized():
            others = others.clone()
            dist.all_reduce(others)
        p_bar = (local + (others - local.detach())) / rows_in_step
        balance = _entropy(p_bar)
        balance = self.world * balance - (self.world - 1) * balance.detach()
        total = (recon + self.beta * kl + gamma * (consistency - self.eta * balance)
                 + self.contrast * contrast)
        parts = [recon, kl, consistency, balance.detach(), contrast]
        return total, torch.stack(parts).detach()


# --- training ----------------------------------------------------------------------------

def clip_gradients(params, max_norm):
    """Scales the gradients of ``params`` to global norm ``max_norm`` when it is larger
    (``clip_grad_norm_``'s rule, in two multi-tensor operations)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.stack(torch._foreach_norm(grads)).norm()
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm.item() + 1e-6))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="train_torch.py",
        description="Train an hvae model with hvae train's loss and schedule, on one "
        "process or many (torchrun), and write a safetensors file for hvae import.")
    p.add_argument("--data", required=True, help="CSV with a header (plain or .gz) or .npy")
    p.add_argument("--clusters", type=int, required=True, help="number of clusters K")
    p.add_argument("--out", required=True, help="output .safetensors (for hvae import)")
    p.add_argument("--latent", type=int, default=16, help="ambient latent size M")
    p.add_argument("--hidden", default="32", help="hidden widths, comma-separated")
    p.add_argument("--likelihood", choices=("gaussian", "bernoulli"), default="gaussian")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    p.add_argument("--epochs", type=int, default=100, help="epochs, warm-up included")
    p.add_argument("--warmup", type=int, default=20, help="warm-up epochs (VAE alone)")
    p.add_argument("--steps", type=int, default=0, help="steps in all (0: use --epochs)")
    p.add_argument("--warmup-steps", type=int, default=0, help="warm-up steps, with --steps")
    p.add_argument("--max-steps", type=int, default=3500,
                   help="without --steps: the most steps in all (0: no bound); on a data set "
                        "whose epochs give more, both phases are shortened in proportion")
    p.add_argument("--batch", type=int, default=64, help="rows per step, all processes")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=6.0, help="weight of the cluster loss")
    p.add_argument("--eta", type=float, default=2.0, help="weight of the balance term")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--contrast", type=float, default=2.0,
                   help="weight of the neighbour contrast (0: off)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="temperature of the neighbour contrast")
    p.add_argument("--neighbours", type=int, default=10)
    p.add_argument("--neighbour-space", choices=("raw", "normalised", "both"), default="both")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--kmeans-restarts", type=int, default=1)
    p.add_argument("--init-rows", type=int, default=200000,
                   help="most mean directions (over all processes) the centres start from")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads per process (at hvae's sizes a step's matrices "
                   "are small and more threads only add overhead)")
    p.add_argument("--quiet", action="store_true", help="no line per epoch")
    return p.parse_args(argv)


def schedule(args, n):
    """``(warm-up steps, steps in all)`` for ``n`` rows, as ``FitConfig::schedule``."""
    if args.steps > 0:
        return min(args.warmup_steps, args.steps), args.steps
    warm = -(-n // args.batch) * args.warmup
    joint = -(-n // (args.batch // 2)) * max(0, args.epochs - args.warmup)
    total = warm + joint
    if args.max_steps == 0 or total <= args.max_steps:
        return warm, total
    # Both phases in proportion, the warm-up rounded to the nearest whole step.
    return (warm * args.max_steps + total // 2) // total, args.max_steps


def all_gather_rows(array):
    """The rows of every process's ``array`` (2-D, float64), concatenated in process
    order, on every process (tensors padded to the longest; ``all_gather_object`` would
    need torch's NumPy bridge)."""
    if not dist.is_initialized():
        return array
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(array)]))
    counts = [int(c.item()) for c in counts]
    padded = np.zeros((max(counts), array.shape[1]))
    padded[:len(array)] = array
    parts = [torch.zeros(padded.shape, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(parts, numpy_to_tensor(padded))
    return np.concatenate([tensor_to_numpy(t)[:c] for t, c in zip(parts, counts)])


def gather_rows(array, cap_per_rank, rng):
    """Every process's rows of ``array`` (at most ``cap_per_rank`` each, drawn at random
    beyond that), concatenated on every process."""
    if len(array) > cap_per_rank:
        array = array[np.sort(rng.choice(len(array), cap_per_rank, replace=False))]
    return all_gather_rows(np.asarray(array, dtype=np.float64))


def init_centres(model, x_shard, args, rank, world, rng):
    """Centres from spherical k-means++ on the mean directions (best objective of
    ``--kmeans-restarts`` runs), computed on process 0 and broadcast; mixing weights
    reset (``train.rs``'s ``init_centres``)."""
    with torch.no_grad():
        mus = tensor_to_numpy(model(numpy_to_tensor(x_shard))[0]).astype(np.float64)
    mus = gather_rows(mus, -(-args.init_rows // world), rng)
    centres = torch.zeros(args.clusters, args.latent)
    if rank == 0:
        runs = [spherical_kmeans(mus, args.clusters, args.kmeans_iters, rng)
                for _ in range(max(1, args.kmeans_restarts))]
        centres = numpy_to_tensor(max(runs, key=lambda r: r[1])[0].astype(np.float32))
    if dist.is_initialized():
        dist.broadcast(centres, 0)
    with torch.no_grad():
        model.segmenter.centres.copy_(centres)
        model.segmenter.log_weights.zero_()


def train(args):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.set_num_threads(max(1, args.threads))
    if args.batch % world or (args.batch // world) % 2 or args.batch // world < 2:
        raise SystemExit(f"train_torch.py: --batch {args.batch} must split into an even "
                         f"number of rows (at least 2) on each of {world} processes")
    hidden = [int(h) for h in args.hidden.split(",")]
    say = (lambda *a: None) if rank else (lambda *a: print(*a, flush=True))

    x, labels = load_shard(args.data, rank, world)
    n_shard = len(x)
    n = int(all_reduce([n_shard])[0])
    if n_shard < 2 or n < args.clusters:
        raise SystemExit(f"train_torch.py: {n} rows ({n_shard} in a shard) are too few")
    offset, scale = fit_normalisation(x)
    views = {"raw": [x], "normalised": [(x - offset) * scale],
             "both": [x, (x - offset) * scale]}[args.neighbour_space]
    neighbours = mine_neighbours(views, args.neighbours)

    torch.manual_seed(args.seed)  # the same initial model on every process
    model = HvaeModule(x.shape[1], hidden, args.latent, args.clusters, args.activation)
    init_like_core(model)
    with torch.no_grad():
        model.norm.offset.copy_(numpy_to_tensor(offset))
        model.norm.scale.copy_(numpy_to_tensor(scale))
    torch.manual_seed(args.seed * 1000003 + rank + 1)  # each process its own draws
    rng = np.random.default_rng([args.seed, rank])
    objective = Objective(model, args.likelihood, args.beta, args.eta, 1.0, world,
                          args.contrast, args.temperature)
    step_fn = objective
    if dist.is_initialized():
        step_fn = nn.parallel.DistributedDataParallel(objective, broadcast_buffers=False)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                           foreach=True)

    warm_steps, total = schedule(args, n)
    local_batch = args.batch // world
    xt = numpy_to_tensor(x)
    order, cursor = np.arange(n_shard), n_shard
    nn_count = neighbours.shape[1]
    sums, in_epoch, epoch = np.zeros(5), 0, 0
    started = time.perf_counter()
    for step in range(total):
        warm = step < warm_steps
        if step == warm_steps:
            init_centres(model, x, args, rank, world, rng)
        paired = not warm or args.contrast != 0.0
        anchors = local_batch // 2 if paired else local_batch
        if cursor + anchors > n_shard:
            rng.shuffle(order)
            cursor = 0
        chunk = order[cursor:cursor + anchors]
        cursor += anchors
        if not paired:
            rows = chunk
        else:
            partners = neighbours[chunk, rng.integers(nn_count, size=len(chunk))]
            rows = np.concatenate([chunk, partners])
        loss, parts = step_fn(xt[numpy_to_tensor(rows)], len(chunk),
                              0.0 if warm else args.gamma, len(rows) * world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, CLIP)
        opt.step()
        parts = tensor_to_numpy(parts)
        if not np.isfinite(parts).all():
            raise SystemExit(f"train_torch.py: training step {step} failed: the loss is "
                             "not finite (lower --lr)")
        sums += parts
        in_epoch += 1
        # An epoch as hvae train counts it: n rows of anchors (a hundredth of the steps
        # with --steps).
        per_epoch = -(-n // (args.batch if warm else args.batch // 2))
        if args.steps > 0:
            per_epoch = max(1, total // 100)
        if in_epoch == per_epoch or step + 1 in (warm_steps, total):
            epoch += 1
            mean = all_reduce(sums / in_epoch) / world
            (say if not args.quiet else (lambda *a: None))(f"epoch {epoch:4d}{' (warm-up)' if warm else '          '}  recon "
                f"{mean[0]:9.4f}  kl {mean[1]:8.4f}  consistency {mean[2]:7.4f}  "
                f"balance {mean[3]:6.4f}  contrast {mean[4]:7.4f}")
            sums, in_epoch = np.zeros(5), 0
    if warm_steps >= total:
        init_centres(model, x, args, rank, world, rng)
    seconds = time.perf_counter() - started
    with torch.no_grad():  # unit centres, as hvae train stores them
        c = model.segmenter.centres
        c.copy_(c / c.norm(dim=1, keepdim=True))
    if rank == 0:
        save_torch(model, args.out, posterior="power", likelihood=args.likelihood)
    report(model, x, labels, n, seconds, args, world, say)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def report(model, x, labels, n, seconds, args, world, say):
    """Prints the training time and, with a label column, ACC over every row."""
    steps = schedule(args, n)[1]
    pace = f"{steps} steps, {seconds / max(1, steps) * 1e3:.2f} ms per step"
    say(f"trained {model.norm.offset.shape[0]}-{args.hidden.replace(',', '-')}-{args.latent} "
        f"(K = {args.clusters}, Power Spherical, {args.likelihood}, {args.activation}) on "
        f"{n} rows with {world} process{'es' if world > 1 else ''} in {seconds:.2f} s "
        f"({pace}): wrote {args.out}")
    if labels is None:
        return
    with torch.no_grad():
        pred = tensor_to_numpy(model(numpy_to_tensor(x))[2].argmax(1))
    pairs = all_gather_rows(np.stack([labels, pred], axis=1).astype(np.float64))
    pairs = pairs.astype(np.int64)
    from scipy.optimize import linear_sum_assignment

    classes, truth = np.unique(pairs[:, 0], return_inverse=True)
    table = np.zeros((len(classes), args.clusters))
    np.add.at(table, (truth, pairs[:, 1]), 1)
    r, c = linear_sum_assignment(-table)
    say(f"ACC {table[r, c].sum() / len(pairs):.4f} (Hungarian, PyTorch's labels of the "
        f"{len(pairs)} rows)")


def main(argv):
    if argv[:1] == ["sampler-check"]:
        return sampler_check(argv[1:])
    return train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
