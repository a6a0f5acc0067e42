#!/usr/bin/env python3
"""Write hvae weights as a safetensors file that `hvae import` reads.

Two ways in, one file format out:

* PyTorch (optional; CI runs it with Debian's ``python3-torch``): :class:`HvaeModule` is an
  ``nn.Module`` of the hvae architecture whose ``state_dict()`` names are exactly the names
  ``hvae import`` expects. Train it however you like (``train_torch.py`` trains it with
  ``hvae train``'s loss, on one or many processes), then
  ``save_torch(module, "model.safetensors")``; ``load_torch`` reads such a file back.
* NumPy (no torch needed): ``save_numpy({name: array}, path, ...)`` writes any dict of
  arrays with the expected names, and ``python torch_export.py from-blob MODEL.hvae
  OUT.safetensors`` converts an hvae weight blob (used by the tests to check that
  ``hvae import`` gives back the same blob, bit for bit).

``python torch_export.py forward MODEL.safetensors DATA OUT.npy`` writes PyTorch's answers
for every row of a data file (CSV with a header, plain or gzipped, a ``label`` column
skipped; or a 2-D ``.npy``): a float32 array of ``M + 1 + K`` columns, ``mu``, ``kappa``
and the cluster probabilities, to compare with the core's (``hvae predict``).

A torch built against NumPy 1 (Debian's 1.13) beside NumPy 2 has no NumPy bridge
(``Tensor.numpy()`` and ``torch.from_numpy`` raise): the conversions here go through
raw buffers instead (:func:`tensor_to_numpy`, :func:`numpy_to_tensor`), which work with
any pairing.

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

import contextlib
import ctypes
import gzip
import io
import struct
import sys
import warnings
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


def read_rows(path):
    """``(x, labels)`` of a data file as ``hvae`` reads it: a CSV with a header (plain or
    gzipped, recognised by its magic bytes; every column a feature except one named
    ``label``) or a 2-D ``.npy`` array (no labels). ``x`` is float32 ``n x D``; ``labels``
    int64 or ``None``."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        x = np.load(path)
        if x.ndim != 2:
            raise ValueError(f"{path}: a .npy data file must be 2-D, not {x.ndim}-D")
        return np.ascontiguousarray(x, dtype=np.float32), None
    opener = gzip.open if head.startswith(b"\x1f\x8b") else open
    with opener(path, "rt") as f:
        names = [c.strip() for c in f.readline().split(",")]
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != len(names):
        raise ValueError(f"{path}: {table.shape[1]} fields per row but {len(names)} names")
    keep = [i for i, c in enumerate(names) if c != "label"]
    labels = None
    if len(keep) < len(names):
        labels = table[:, names.index("label")].astype(np.int64)
    return np.ascontiguousarray(table[:, keep], dtype=np.float32), labels


def _import_torch():
    """``torch``, or ``None`` when it is not installed. A torch built against NumPy 1
    beside NumPy 2, on first touching NumPy (parsing a shape argument does), makes NumPy
    print a long "compiled using NumPy 1.x" notice and torch warn "Failed to initialize
    NumPy"; both say only that the bridge this module does not use is missing, so that
    first touch is made here and they are dropped (any other output is kept)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
            import torch as t

            t.frombuffer(bytearray(4), dtype=t.float32).reshape((1,))
    except ImportError:
        return None
    finally:
        text = err.getvalue()
        if text and "compiled using NumPy 1.x" not in text:
            sys.stderr.write(text)
    return t


torch = _import_torch()  # PyTorch is optional: only the module definition needs it.

if torch is not None:
    from torch import nn

    _NP_OF = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64}
    _TORCH_OF = {np.dtype(v): k for k, v in _NP_OF.items()}

    def tensor_to_numpy(t):
        """A NumPy copy of a float32, float64 or int64 tensor, through its raw bytes (no
        NumPy bridge needed)."""
        t = t.detach().to("cpu").contiguous()
        dtype = _NP_OF[t.dtype]
        if t.numel() == 0:
            return np.empty(tuple(t.shape), dtype=dtype)
        raw = (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(t.shape)).copy()

    def numpy_to_tensor(a):
        """A tensor copy of a float32, float64 or int64 array, through its raw bytes."""
        a = np.ascontiguousarray(a)
        dtype = _TORCH_OF[a.dtype]
        if a.size == 0:
            return torch.empty(a.shape, dtype=dtype)
        return torch.frombuffer(bytearray(a.tobytes()), dtype=dtype).reshape(a.shape)

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
        tensors = {name: tensor_to_numpy(t.to(torch.float32))
                   for name, t in module.state_dict().items()}
        save_numpy(tensors, path, posterior, likelihood, module.activation)

    def load_torch(path):
        """``(module, kinds)``: an :class:`HvaeModule` holding the weights of a safetensors
        file in the layout above (``save_torch``'s, or ``from-blob``'s), and its
        ``metadata`` kinds (defaults where absent)."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        arrays = load_file(path)
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
        given = {}
        for key, allowed in (("posterior", POSTERIORS), ("likelihood", LIKELIHOODS),
                             ("activation", ACTIVATIONS)):
            value = meta.get(key, allowed[0])  # a name, or the blob's numeric code
            given[key] = allowed[int(value)] if value in ("0", "1") else value
        kinds = metadata(**given)
        hidden = []
        while f"encoder.{len(hidden)}.weight" in arrays:
            hidden.append(arrays[f"encoder.{len(hidden)}.weight"].shape[0])
        if not hidden or "segmenter.centres" not in arrays:
            raise ValueError(f"{path}: not an hvae weight file (no encoder or centres)")
        k, m = arrays["segmenter.centres"].shape
        d = arrays["encoder.0.weight"].shape[1]
        module = HvaeModule(d, hidden, m, k, activation=kinds["activation"])
        state = module.state_dict()
        module.load_state_dict({
            name: numpy_to_tensor(np.asarray(arrays[name], dtype=np.float32))
            .reshape(state[name].shape) if name in arrays else state[name]
            for name in state})
        return module, kinds

    def forward_rows(module, x, chunk=4096):
        """``mu | kappa | p`` for every row of ``x`` (float32 ``n x D``), ``n x (M+1+K)``
        float32, computed by ``module`` in chunks."""
        out = []
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                mu, kappa, p = module(numpy_to_tensor(x[i:i + chunk]))
                out.append(tensor_to_numpy(torch.cat([mu, kappa[:, None], p], dim=1)))
        return np.concatenate(out).astype(np.float32)


def _main(argv):
    if len(argv) == 4 and argv[1] == "from-blob":
        blob_to_safetensors(argv[2], argv[3])
        return 0
    if len(argv) == 5 and argv[1] == "forward":
        if torch is None:
            print("torch_export.py: forward needs PyTorch (import torch failed)",
                  file=sys.stderr)
            return 2
        module, _ = load_torch(argv[2])
        np.save(argv[4], forward_rows(module.eval(), read_rows(argv[3])[0]))
        return 0
    print("usage: torch_export.py from-blob MODEL.hvae OUT.safetensors\n"
          "       torch_export.py forward MODEL.safetensors DATA OUT.npy", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
