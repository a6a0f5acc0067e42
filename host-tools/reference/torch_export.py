#!/usr/bin/env python3
"""Write hvae weights as a safetensors file that `hvae import` reads.

Two ways in, one file format out:

* PyTorch (optional; not installed in CI): :class:`HvaeModule` is an ``nn.Module`` of the
  hvae architecture whose ``state_dict()`` names are exactly the names ``hvae import``
  expects. Train it however you like, then ``save_torch(module, "model.safetensors")``.
* NumPy (no torch needed): ``save_numpy({name: array}, path, ...)`` writes any dict of
  arrays with the expected names, and ``python torch_export.py from-blob MODEL.hvae
  OUT.safetensors`` converts an hvae weight blob (used by the tests to check that
  ``hvae import`` gives back the same blob, bit for bit).

Expected tensors, with ``D`` inputs, hidden widths ``h1..hL`` (``L`` in 1..4, ``h0 = D``),
latent ``M`` (the sphere ``S^(M-1)``) and ``K`` clusters; weights are ``out x in`` as
``torch.nn.Linear`` stores them:

=============================  ====================  ===========================================
name                           shape                 meaning
=============================  ====================  ===========================================
``norm.offset``                ``[D]``               subtracted from the input (optional pair:
``norm.scale``                 ``[D]``               absent means offset 0, scale 1); then scaled
``encoder.{l}.weight/.bias``   ``[h(l+1), h(l)]``    hidden layer ``l = 0..L-1``, then activation
``mu.weight`` / ``mu.bias``    ``[M, hL]`` / ``[M]`` direction head, ``mu = m / |m|``
``kappa.weight/.bias``         ``[1, hL]`` / ``[1]`` ``kappa = softplus(.) + 1``
``segmenter.centres``          ``[K, M]``            raw centres (normalised in the forward pass)
``segmenter.log_kappa``        ``[1]`` or ``[]``     ``ln kappa_s``
``segmenter.log_weights``      ``[K]``               mixing log-weights ``ln pi_k``
``decoder.{l}.weight/.bias``   ``[out, in]``         ``l = 0..L``: ``M -> hL -> ... -> h1 -> D``
=============================  ====================  ===========================================

Values should be float32 (``hvae import`` also converts float64, float16 and bfloat16).
The header's ``__metadata__`` carries the kinds: ``posterior`` (``vmf`` | ``power``),
``likelihood`` (``gaussian`` | ``bernoulli``) and ``activation`` (``relu`` | ``tanh``);
``hvae import`` flags override them.
"""

import struct
import sys
import zlib

import numpy as np
from safetensors.numpy import save_file

POSTERIORS = ("vmf", "power")
LIKELIHOODS = ("gaussian", "bernoulli")
ACTIVATIONS = ("relu", "tanh")

_HEADER = struct.Struct("<4sHHIBBBBI4IIII")  # the weight blob's 48-byte header


def layout(d, hidden, m, k):
    """``(name, shape)`` of every tensor, in the weight blob's order."""
    out = [("norm.offset", (d,)), ("norm.scale", (d,))]
    widths = [d] + list(hidden)
    for l in range(len(hidden)):
        out += [(f"encoder.{l}.weight", (widths[l + 1], widths[l])),
                (f"encoder.{l}.bias", (widths[l + 1],))]
    h = hidden[-1]
    out += [("mu.weight", (m, h)), ("mu.bias", (m,)),
            ("kappa.weight", (1, h)), ("kappa.bias", (1,)),
            ("segmenter.centres", (k, m)), ("segmenter.log_kappa", (1,)),
            ("segmenter.log_weights", (k,))]
    dec = [m] + list(reversed(hidden)) + [d]
    for l in range(len(dec) - 1):
        out += [(f"decoder.{l}.weight", (dec[l + 1], dec[l])),
                (f"decoder.{l}.bias", (dec[l + 1],))]
    return out


def metadata(posterior="vmf", likelihood="gaussian", activation="relu"):
    """The ``__metadata__`` dict ``hvae import`` reads the kinds from."""
    for value, allowed in ((posterior, POSTERIORS), (likelihood, LIKELIHOODS),
                           (activation, ACTIVATIONS)):
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {allowed}")
    return {"posterior": posterior, "likelihood": likelihood, "activation": activation}


def save_numpy(tensors, path, posterior="vmf", likelihood="gaussian", activation="relu"):
    """Writes ``{name: array}`` as float32 safetensors with the kinds in the metadata."""
    arrays = {name: np.ascontiguousarray(np.asarray(a, dtype=np.float32))
              for name, a in tensors.items()}
    save_file(arrays, path, metadata=metadata(posterior, likelihood, activation))


def read_blob(data):
    """``(tensors, kinds)`` of an hvae weight blob (bytes): float32 arrays by name, in
    layout order, and the ``metadata`` kinds. Raises ``ValueError`` on a bad blob."""
    if len(data) < _HEADER.size + 4:
        raise ValueError("truncated weight blob")
    (magic, version, header_len, _flags, post, lik, act, depth, d, h1, h2, h3, h4, m, k,
     count) = _HEADER.unpack_from(data, 0)
    if magic != b"HVAE" or version != 1 or header_len != _HEADER.size:
        raise ValueError("not a version-1 hvae weight blob")
    if len(data) != _HEADER.size + 4 * count + 4:
        raise ValueError("blob length does not match its parameter count")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != zlib.crc32(data[:-4]):
        raise ValueError("blob CRC mismatch")
    hidden = [h1, h2, h3, h4][:depth]
    values = np.frombuffer(data, dtype="<f4", count=count, offset=_HEADER.size)
    tensors, off = {}, 0
    for name, shape in layout(d, hidden, m, k):
        n = int(np.prod(shape))
        tensors[name] = values[off:off + n].reshape(shape).copy()
        off += n
    if off != count:
        raise ValueError("blob parameter count does not match its sizes")
    kinds = {"posterior": POSTERIORS[post], "likelihood": LIKELIHOODS[lik],
             "activation": ACTIVATIONS[act]}
    return tensors, kinds


def blob_to_safetensors(blob_path, out_path):
    """Converts an hvae weight blob into the safetensors file ``hvae import`` reads."""
    with open(blob_path, "rb") as f:
        tensors, kinds = read_blob(f.read())
    save_numpy(tensors, out_path, **kinds)


try:  # PyTorch is optional: only the module definition needs it.
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - CI has no torch
    torch = None

if torch is not None:

    class Norm(nn.Module):
        """Fixed input normalisation ``(x - offset) * scale`` (buffers, not trained)."""

        def __init__(self, d):
            super().__init__()
            self.register_buffer("offset", torch.zeros(d))
            self.register_buffer("scale", torch.ones(d))

        def forward(self, x):
            return (x - self.offset) * self.scale

    class Segmenter(nn.Module):
        """``p(k|z) = softmax_k(kappa_s c_k . z / |c_k| + log pi_k)``."""

        def __init__(self, m, k):
            super().__init__()
            self.centres = nn.Parameter(torch.randn(k, m))
            self.log_kappa = nn.Parameter(torch.full((1,), float(np.log(10.0))))
            self.log_weights = nn.Parameter(torch.zeros(k))

        def forward(self, z):
            c = self.centres / self.centres.norm(dim=1, keepdim=True)
            return torch.softmax(self.log_kappa.exp() * z @ c.T + self.log_weights, dim=-1)

    class HvaeModule(nn.Module):
        """The hvae architecture; ``state_dict()`` has the names ``hvae import`` expects.

        ``forward(x)`` returns ``(mu, kappa, p)``: mean direction, concentration and
        cluster probabilities at ``mu`` (what the device computes); ``decode(z)`` gives
        the reconstruction (mean for Gaussian, logits for Bernoulli). Sampling and the
        loss are left to the training script.
        """

        def __init__(self, d, hidden, m, k, activation="relu", kappa_max=1.0e4):
            super().__init__()
            if activation not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {ACTIVATIONS}")
            self.activation = activation
            self.kappa_max = kappa_max
            self.norm = Norm(d)
            widths = [d] + list(hidden)
            self.encoder = nn.ModuleList(
                nn.Linear(widths[i], widths[i + 1]) for i in range(len(hidden)))
            self.mu = nn.Linear(hidden[-1], m)
            self.kappa = nn.Linear(hidden[-1], 1)
            self.segmenter = Segmenter(m, k)
            dec = [m] + list(reversed(hidden)) + [d]
            # A ModuleList (not a Sequential with activations in between) keeps the
            # indices 0, 1, 2, ... that `hvae import` expects.
            self.decoder = nn.ModuleList(
                nn.Linear(dec[i], dec[i + 1]) for i in range(len(dec) - 1))

        def _act(self, y):
            return torch.relu(y) if self.activation == "relu" else torch.tanh(y)

        def forward(self, x):
            h = self.norm(x)
            for layer in self.encoder:
                h = self._act(layer(h))
            m = self.mu(h)
            mu = m / m.norm(dim=-1, keepdim=True)
            kappa = (nn.functional.softplus(self.kappa(h)) + 1.0).clamp(max=self.kappa_max)
            return mu, kappa.squeeze(-1), self.segmenter(mu)

        def decode(self, z):
            h = z
            for layer in self.decoder[:-1]:
                h = self._act(layer(h))
            return self.decoder[-1](h)

    def save_torch(module, path, posterior="vmf", likelihood="gaussian"):
        """Writes ``module.state_dict()`` (an :class:`HvaeModule`) for ``hvae import``."""
        tensors = {name: t.detach().cpu().to(torch.float32).numpy()
                   for name, t in module.state_dict().items()}
        save_numpy(tensors, path, posterior, likelihood, module.activation)


def _main(argv):
    if len(argv) == 4 and argv[1] == "from-blob":
        blob_to_safetensors(argv[2], argv[3])
        return 0
    print("usage: torch_export.py from-blob MODEL.hvae OUT.safetensors", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
