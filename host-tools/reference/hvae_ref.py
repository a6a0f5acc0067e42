#!/usr/bin/env python3
"""An independent reference implementation of the hvae model, written from the maths.

It is deliberately *not* a translation of the Rust core: it is the model of
docs/design.md and of the loss documentation (`src/train/loss.rs`), written in vectorised NumPy
with SciPy's special functions, and differentiated by `autograd` (reverse-mode automatic
differentiation of NumPy code) instead of by hand. Nothing in it is tuned for speed or
for f32: it runs in float64 throughout.

What it computes, for an exported weight blob and given inputs:

* inference: per sample the mean direction ``mu``, the concentration ``kappa``, the
  cluster probabilities ``p(k | mu)``, the label ``argmax_k p`` and the cosine to the
  nearest centre ``max_k c_k . mu / |c_k|``;
* the loss of one batch, by part (recon, kl, consistency, entropy, balance, supervised,
  total), with the posterior draws replayed from a record (below);
* the gradient of the total loss with respect to every parameter tensor of an update
  scope, by automatic differentiation.

Replayed draws. For batch row ``i`` the record holds ``(kappa_i, w_i, dw_dkappa_i, v_i)``
(``v_i`` a unit vector of ``M - 1`` values) and the draw is

    z_i(mu, kappa) = H(mu) (w(kappa), sqrt(1 - w(kappa)^2) v_i),
    w(kappa)       = w_i + dw_dkappa_i (kappa - kappa_i),

with ``H(mu) = I - 2 u u^T / (u . u)``, ``u = e1 - mu``, the Householder reflection taking
``e1`` to ``mu``. ``w`` is the first-order model of the sampler at the recorded
``kappa_i``: its value and its derivative there are exactly what a reparameterised
(pathwise) gradient uses, so differentiating this function is the pathwise gradient.

KL to the uniform prior, from the closed forms (``nu = M/2 - 1``):

* vMF: ``KL = kappa A_M(kappa) + log C_M(kappa) + log|S^{M-1}|`` with
  ``A_M = I_{M/2} / I_{M/2-1}``, ``log C_M = nu ln kappa - (M/2) ln 2 pi - ln I_nu``,
  Bessel functions from ``scipy.special.ive`` (exponentially scaled);
* Power Spherical: ``KL = -H + log|S^{M-1}|``,
  ``H = ln N - kappa (ln 2 + psi(alpha) - psi(alpha + beta))``,
  ``ln N = (alpha + beta) ln 2 + ln Gamma(alpha) - ln Gamma(alpha + beta) + beta ln pi``,
  ``alpha = (M-1)/2 + kappa``, ``beta = (M-1)/2``;
* ``log|S^{M-1}| = ln 2 + (M/2) ln pi - ln Gamma(M/2)``.

Command line (for humans; `compare.py` is what the tests run):

    python hvae_ref.py info MODEL.hvae            # sizes, kinds, parameter count, CRC
    python hvae_ref.py segment MODEL.hvae X.csv   # one JSON object per input row
    python hvae_ref.py golden                     # rewrite the core's golden tables
                                                  # (tests/golden/, via golden.py)
"""

import json
import struct
import sys
import zlib

import autograd.numpy as np
from autograd import grad
from autograd.scipy.special import digamma, gammaln, ive, logsumexp

# (name, shape) of every tensor in the blob's order: the one table, torch_export.py's.
from torch_export import layout

# Largest posterior concentration the encoder emits (shape.rs KAPPA_MAX): larger values
# are clamped and carry no gradient.
KAPPA_MAX = 1.0e4

MAGIC = b"HVAE"
HEADER = struct.Struct("<4sHHIBBBBI4IIII")  # 48 bytes, little-endian
assert HEADER.size == 48

POSTERIORS = {0: "vmf", 1: "power"}
LIKELIHOODS = {0: "gaussian", 1: "bernoulli"}
ACTIVATIONS = {0: "relu", 1: "tanh"}

SCOPES = ("Full", "EncoderAndSegmenter", "SegmenterOnly")


class BlobError(ValueError):
    """The bytes are not a valid version-1 weight blob."""


class RefModel:
    """Sizes, kinds and named parameter tensors (float64) of one model."""

    def __init__(self, posterior, likelihood, activation, d, hidden, m, k, tensors, crc):
        self.posterior = posterior
        self.likelihood = likelihood
        self.activation = activation
        self.d = d
        self.hidden = list(hidden)
        self.m = m
        self.k = k
        self.tensors = tensors  # dict name -> ndarray, in layout order
        self.crc = crc

    @property
    def depth(self):
        return len(self.hidden)

    def names_in_scope(self, scope):
        """Tensor names an update scope trains, in layout order."""
        enc = [n for n in self.tensors if n.startswith(("encoder.", "mu.", "kappa."))]
        seg = [n for n in self.tensors if n.startswith("segmenter.")]
        dec = [n for n in self.tensors if n.startswith("decoder.")]
        if scope == "Full":
            return enc + seg + dec
        if scope == "EncoderAndSegmenter":
            return enc + seg
        if scope == "SegmenterOnly":
            return seg
        raise ValueError(f"unknown scope {scope!r}")


def load_blob(data):
    """Parses a version-1 blob (bytes) into a RefModel; raises BlobError."""
    if len(data) < HEADER.size + 4:
        raise BlobError("truncated: shorter than header + CRC")
    (magic, version, header_len, flags, post, lik, act, depth, d, h1, h2, h3, h4, m, k,
     count) = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BlobError(f"bad magic {magic!r}")
    if version != 1:
        raise BlobError(f"unsupported version {version}")
    if header_len != HEADER.size:
        raise BlobError(f"bad header length {header_len}")
    if len(data) != HEADER.size + 4 * count + 4:
        raise BlobError(f"length {len(data)} does not match parameter count {count}")
    stored = struct.unpack_from("<I", data, len(data) - 4)[0]
    computed = zlib.crc32(data[:-4]) & 0xFFFFFFFF
    if stored != computed:
        raise BlobError(f"CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")
    if flags != 0:
        raise BlobError(f"unsupported flags {flags:#x}")
    if post not in POSTERIORS or lik not in LIKELIHOODS or act not in ACTIVATIONS:
        raise BlobError("unknown kind code")
    widths = [h1, h2, h3, h4]
    if not 1 <= depth <= 4 or any(w == 0 for w in widths[:depth]) or any(
            w != 0 for w in widths[depth:]):
        raise BlobError("bad hidden sizes")
    if d < 1 or not 2 <= m <= 64 or not 1 <= k <= 255:
        raise BlobError("bad sizes")
    hidden = widths[:depth]
    lay = layout(d, hidden, m, k)
    need = sum(int(np.prod(s)) for _, s in lay)
    if need != count:
        raise BlobError(f"parameter count {count} != {need} implied by the sizes")
    values = np.frombuffer(data, dtype="<f4", count=count, offset=HEADER.size).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise BlobError("non-finite parameter")
    tensors, off = {}, 0
    for name, shape in lay:
        n = int(np.prod(shape))
        tensors[name] = values[off:off + n].reshape(shape)
        off += n
    return RefModel(POSTERIORS[post], LIKELIHOODS[lik], ACTIVATIONS[act], d, hidden, m, k,
                    tensors, computed)


def load_blob_file(path):
    with open(path, "rb") as f:
        return load_blob(f.read())


# ------------------------------------------------------------------------- the model

def _act(kind, y):
    if kind == "relu":
        # The derivative is 1 for y > 0 and 0 otherwise (also at exactly 0).
        return np.where(y > 0.0, y, 0.0)
    return np.tanh(y)


def log_sphere_area(m):
    return np.log(2.0) + 0.5 * m * np.log(np.pi) - gammaln(0.5 * m)


def kl_vmf(m, kappa):
    """KL(vMF(mu, kappa) || U(S^{M-1})), vectorised over kappa."""
    nu = 0.5 * m - 1.0
    ive_nu = ive(nu, kappa)
    a = ive(0.5 * m, kappa) / ive_nu  # A_M, the exponential scalings cancel
    log_i = np.log(ive_nu) + kappa
    log_c = nu * np.log(kappa) - 0.5 * m * np.log(2.0 * np.pi) - log_i
    return kappa * a + log_c + log_sphere_area(m)


def kl_power(m, kappa):
    """KL(PowerSpherical(mu, kappa) || U(S^{M-1})), vectorised over kappa."""
    beta = 0.5 * (m - 1.0)
    alpha = beta + kappa
    ln_n = ((alpha + beta) * np.log(2.0) + gammaln(alpha) - gammaln(alpha + beta)
            + beta * np.log(np.pi))
    entropy = ln_n - kappa * (np.log(2.0) + digamma(alpha) - digamma(alpha + beta))
    return log_sphere_area(m) - entropy


def encode(model, p, x):
    """Rows of x (B x D, raw) -> (x_n, mu (B x M), kappa (B,))."""
    xn = (x - p["norm.offset"]) * p["norm.scale"]
    h = xn
    for l in range(model.depth):
        h = _act(model.activation, h @ p[f"encoder.{l}.weight"].T + p[f"encoder.{l}.bias"])
    direction = h @ p["mu.weight"].T + p["mu.bias"]
    norm = np.sqrt(np.sum(direction * direction, axis=1, keepdims=True))
    mu = direction / norm
    pre = h @ p["kappa.weight"][0] + p["kappa.bias"][0]
    raw = np.logaddexp(0.0, pre) + 1.0  # softplus + 1
    kappa = np.where(raw > KAPPA_MAX, KAPPA_MAX, raw)
    return xn, mu, kappa


def unit_centres(p):
    c = p["segmenter.centres"]
    return c / np.sqrt(np.sum(c * c, axis=1, keepdims=True))


def cluster_log_probs(p, v):
    """log p(k | v) = log softmax_k(kappa_s c_k . v / |c_k| + ln pi_k), rows of v."""
    logits = np.exp(p["segmenter.log_kappa"][0]) * (v @ unit_centres(p).T) \
        + p["segmenter.log_weights"]
    return logits - logsumexp(logits, axis=1, keepdims=True)


def decode(model, p, z):
    h = z
    for l in range(model.depth + 1):
        h = h @ p[f"decoder.{l}.weight"].T + p[f"decoder.{l}.bias"]
        if l < model.depth:
            h = _act(model.activation, h)
    return h  # Gaussian mean (normalised units) or Bernoulli logits


def householder(mu, x):
    """H(mu) x for rows, H = I - 2 u u^T / (u . u), u = e1 - mu (maps e1 to mu)."""
    u = np.concatenate([1.0 - mu[:, :1], -mu[:, 1:]], axis=1)
    uu = np.sum(u * u, axis=1, keepdims=True)
    ux = np.sum(u * x, axis=1, keepdims=True)
    return x - 2.0 * u * ux / uu


def replay_draws(mu, kappa, draws):
    """z_i = H(mu_i) (w_i(kappa_i'), sqrt(1 - w^2) v_i), w linear in kappa (see top)."""
    w = draws["w"] + draws["dw_dkappa"] * (kappa - draws["kappa"])
    r = np.sqrt(1.0 - w * w)
    x = np.concatenate([w[:, None], r[:, None] * draws["v"]], axis=1)
    return householder(mu, x)


def segment(model, x):
    """Inference on rows of x: dict of mu, kappa, probs, label, cosine (numpy arrays)."""
    p = model.tensors
    _, mu, kappa = encode(model, p, np.asarray(x, dtype=np.float64))
    logp = cluster_log_probs(p, mu)
    probs = np.exp(logp)
    cos = mu @ unit_centres(p).T
    return {"mu": mu, "kappa": kappa, "probs": probs, "label": np.argmax(probs, axis=1),
            "cosine": np.max(cos, axis=1)}


def loss_parts(model, p, batch, cfg, scope, draws):
    """The loss of one batch by part (dict; values may be autograd boxes).

    L = recon + beta kl + gamma (consistency + lambda entropy - eta balance + supervised)

    * recon: mean_i -ln p(x_i | z_i) without its constant: Gaussian
      sum_q (xhat_q - x_n,q)^2 / (2 sigma^2) on the normalised input, Bernoulli
      sum_q softplus(a_q) - x_q a_q on the raw input (a the logits);
    * kl: mean_i KL(q(. | x_i) || U);
    * p_i = p(. | mu_i) (ClusterInput Mean) or p(. | z_i) (Draw);
    * consistency: mean over pairs of -ln(p_i . p_j); entropy: mean_i H(p_i);
    * balance: H(p_bar), p_bar = rho p_bar_prev + (1 - rho) mean_i p_i;
    * supervised: mean over labelled rows of -ln p_i[y_i] (0 when none).

    SegmenterOnly: p_i = p(. | mu_i), no draw, and no recon or kl term.
    """
    x = batch["inputs"]
    bsz = x.shape[0]
    xn, mu, kappa = encode(model, p, x)
    parts = {}
    if scope == "SegmenterOnly":
        parts["recon"] = 0.0
        parts["kl"] = 0.0
        v = mu
    else:
        z = replay_draws(mu, kappa, draws)
        out = decode(model, p, z)
        if model.likelihood == "gaussian":
            e = out - xn
            parts["recon"] = np.sum(e * e) / (2.0 * cfg["sigma"] ** 2) / bsz
        else:
            parts["recon"] = np.sum(np.logaddexp(0.0, out) - x * out) / bsz
        kl = kl_vmf(model.m, kappa) if model.posterior == "vmf" else kl_power(model.m, kappa)
        parts["kl"] = np.mean(kl)
        v = mu if cfg["cluster_input"] == "Mean" else z
    logp = cluster_log_probs(p, v)
    prob = np.exp(logp)
    pairs = batch["pairs"]
    if len(pairs):
        s = np.sum(prob[pairs[:, 0]] * prob[pairs[:, 1]], axis=1)
        parts["consistency"] = np.mean(-np.log(s))
    else:
        parts["consistency"] = 0.0
    parts["entropy"] = np.mean(-np.sum(prob * logp, axis=1))
    rho = cfg["balance_momentum"]
    p_bar = rho * batch["p_bar_prev"] + (1.0 - rho) * np.mean(prob, axis=0)
    parts["balance"] = -np.sum(p_bar * np.log(p_bar))
    rows, ys = batch["labelled_rows"], batch["labelled_ys"]
    if len(rows):
        parts["supervised"] = np.mean(-logp[rows, ys])
    else:
        parts["supervised"] = 0.0
    parts["total"] = (parts["recon"] + cfg["beta"] * parts["kl"]
                      + cfg["gamma"] * (parts["consistency"] + cfg["entropy"] * parts["entropy"]
                                        - cfg["eta"] * parts["balance"] + parts["supervised"]))
    parts["p_bar"] = p_bar
    return parts


def make_batch(inputs, labels, pairs, p_bar_prev, k):
    x = np.asarray(inputs, dtype=np.float64)
    labels = list(labels) if labels else []
    rows = np.array([i for i, y in enumerate(labels) if y is not None], dtype=int)
    ys = np.array([y for y in labels if y is not None], dtype=int)
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    pb = np.asarray(p_bar_prev if p_bar_prev is not None else np.zeros(k), dtype=np.float64)
    return {"inputs": x, "labelled_rows": rows, "labelled_ys": ys, "pairs": pairs,
            "p_bar_prev": pb}


def make_draws(rec):
    if rec is None:
        return None
    return {key: np.asarray(rec[key], dtype=np.float64)
            for key in ("kappa", "w", "dw_dkappa", "v")}


def loss_and_grad(model, batch, cfg, scope, draws):
    """(parts as floats, p_bar, {tensor name: gradient}) for the scope's tensors."""
    names = model.names_in_scope(scope)
    frozen = {n: t for n, t in model.tensors.items() if n not in names}

    def total(trainable):
        p = dict(frozen)
        p.update(trainable)
        return loss_parts(model, p, batch, cfg, scope, draws)["total"]

    trainable = {n: model.tensors[n] for n in names}
    grads = grad(total)(trainable)
    parts = loss_parts(model, model.tensors, batch, cfg, scope, draws)
    p_bar = np.asarray(parts.pop("p_bar"))
    return {n: float(v) for n, v in parts.items()}, p_bar, grads


# ------------------------------------------------------------------------- command line

def _load_or_say(path):
    """The model in ``path``, or ``None`` after saying on stderr why it cannot be read."""
    try:
        return load_blob_file(path)
    except (OSError, BlobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _main(argv):
    if len(argv) >= 2 and argv[0] == "info":
        mdl = _load_or_say(argv[1])
        if mdl is None:
            return 2
        n = sum(t.size for t in mdl.tensors.values())
        print(json.dumps({"posterior": mdl.posterior, "likelihood": mdl.likelihood,
                          "activation": mdl.activation, "input": mdl.d,
                          "hidden": mdl.hidden, "latent": mdl.m, "clusters": mdl.k,
                          "params": int(n), "crc": mdl.crc}))
        return 0
    if len(argv) >= 3 and argv[0] == "segment":
        mdl = _load_or_say(argv[1])
        if mdl is None:
            return 2
        x = np.loadtxt(argv[2], delimiter=",", ndmin=2)
        out = segment(mdl, x)
        for i in range(x.shape[0]):
            print(json.dumps({key: (val[i].tolist() if hasattr(val[i], "tolist") else val[i])
                              for key, val in out.items()}))
        return 0
    if argv[:1] == ["golden"]:
        # The SciPy/mpmath golden values of the core's distribution tests live in
        # golden.py (no autograd needed there); this is the one entry point for both.
        import golden
        golden.main()
        return 0
    print(__doc__.split("Command line")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
