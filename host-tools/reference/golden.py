#!/usr/bin/env python3
"""Golden values for the special functions and the two distributions on the sphere.

Writes one CSV file per table under tests/golden/ (`#` lines: where the values come
from and what each column is; then one row of numbers per line, each the shortest
decimal that parses back to the same f64), which the tests read with
`dist_common::golden`:

    gamma, gamma_diff, log_bessel_i,   ln Gamma, digamma, trigamma and their differences,
    bessel_ratio, beta_inc,            ln I_nu, A_M, the regularised incomplete beta
    log_sphere_area                    function, ln |S^(M-1)|
    vmf, vmf_logpdf, ps, ps_logpdf     vMF and Power Spherical log-normaliser,
                                       log-density, entropy, KL to the uniform law and
                                       its derivative

Values come from SciPy wherever SciPy computes the quantity directly
(`scipy.special.gammaln/digamma/polygamma/ive/betainc`,
`scipy.stats.vonmises_fisher`, `scipy.stats.vonmises`). Quantities that SciPy can only
give as a difference of two much larger numbers (the KL near kappa = 0, dKL/dkappa,
ln Gamma(a+b) - ln Gamma(a), the Power Spherical closed forms) are evaluated from the
same closed forms in mpmath at 60 digits; every such value is cross-checked against
the plain SciPy/float64 formula where that formula is well conditioned, and the
script fails if the two disagree.

Run from the repository root:

    python3 -m venv host-tools/reference/.venv
    host-tools/reference/.venv/bin/pip install -r host-tools/reference/requirements.txt
    host-tools/reference/.venv/bin/python host-tools/reference/golden.py
"""

import os
import sys

import mpmath as mp
import numpy as np
from scipy import special, stats

mp.mp.dps = 60

MS = [2, 3, 5, 8, 16, 64]
KAPPAS = [1e-3, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]
# Extra points around the series/asymptotic switch of ln I_nu (x = 30).
KAPPAS_BESSEL = KAPPAS + [29.99, 30.0, 30.01, 50.0]
# Cosines at which the log-densities are tabulated (z = (w, sqrt(1-w^2), 0, ...)).
COSINES = [1.0, 0.5, -0.7]

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "golden")


def f(x):
    """Decimal that parses back to the same f64 (Python's repr, as a float literal)."""
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"non-finite golden value {x}")
    r = repr(x)
    return r if ("." in r or "e" in r) else r + ".0"


def close(a, b, rel, what):
    a, b = float(a), float(b)
    if abs(a - b) > rel * max(abs(a), abs(b), 1e-300):
        sys.exit(f"cross-check failed for {what}: {a!r} vs {b!r}")


def table(name, doc, rows):
    """(file name, text after the header) of one table."""
    body = "".join(",".join(r) + "\n" for r in rows)
    return name.lower() + ".csv", f"# {doc}\n{body}"


# ---------------------------------------------------------------- special functions

GAMMA_X = [1e-3, 0.01, 0.1, 0.5, 0.999, 1.0, 1.5, 1.4616, 2.0, 2.5, 3.7, 5.0, 9.99, 10.0,
           12.5, 31.5, 64.5, 100.0, 1e3, 10031.5, 1e5, 1e6]


def special_tables():
    out = []
    rows = []
    for x in GAMMA_X:
        lg, dg, tg = special.gammaln(x), special.digamma(x), special.polygamma(1, x)
        close(lg, mp.loggamma(x), 1e-13, "gammaln") if abs(lg) > 1e-3 else None
        close(tg, mp.psi(1, x), 1e-13, "trigamma")
        rows.append([f(x), f(lg), f(dg), f(tg)])
    out.append(table("GAMMA", "(x, ln Gamma(x), digamma(x), trigamma(x)) from scipy.special.", rows))

    rows = []
    for a in [1e-3, 0.5, 1.0, 1.5, 3.5, 7.5, 31.5, 100.5, 1000.5, 10031.5]:
        for b in [1e-3, 0.5, 1.5, 7.5, 31.5]:
            a_, b_ = mp.mpf(a), mp.mpf(b)
            lr = mp.loggamma(a_ + b_) - mp.loggamma(a_)
            dd = mp.psi(0, a_ + b_) - mp.psi(0, a_)
            td = mp.psi(1, a_) - mp.psi(1, a_ + b_)
            rows.append([f(a), f(b), f(lr), f(dd), f(td)])
    out.append(table(
        "GAMMA_DIFF",
        "(a, b, ln Gamma(a+b) - ln Gamma(a), psi(a+b) - psi(a), psi'(a) - psi'(a+b)), mpmath.",
        rows))

    rows = []
    for m in MS:
        nu = m / 2 - 1
        for x in KAPPAS_BESSEL:
            v = np.log(special.ive(nu, x)) + x
            ref = mp.log(mp.besseli(nu, x))
            # log(ive) + x cancels when ln I is much smaller than x (x = 1e-3, nu = 0):
            # the check allows for that and the table keeps the mpmath value.
            close(v, ref, 1e-13 * max(1.0, x / abs(float(ref))), f"ln I_{nu}({x})")
            rows.append([f(nu), f(x), f(ref)])
    out.append(table("LOG_BESSEL_I", "(nu, x, ln I_nu(x)): mpmath, checked against "
                     "log(scipy.special.ive) + x.", rows))

    rows = []
    for m in MS:
        for k in KAPPAS_BESSEL:
            a = special.ive(m / 2, k) / special.ive(m / 2 - 1, k)
            ref = mp.besseli(m / 2, k) / mp.besseli(m / 2 - 1, k)
            close(a, ref, 1e-13, f"A_{m}({k})")
            rows.append([f(m), f(k), f(a)])
    out.append(table("BESSEL_RATIO", "(M, kappa, A_M(kappa)) from scipy.special.ive.", rows))

    rows = []
    for m in MS:
        beta = (m - 1) / 2
        for k in [1e-3, 1.0, 10.0, 1e3, 1e4]:
            alpha = beta + k
            for q in [1e-6, 0.05, 0.5, 0.95, 1 - 1e-6]:
                x = special.betaincinv(alpha, beta, q)
                if not 0 < x < 1:
                    continue
                rows.append([f(alpha), f(beta), f(x), f(special.betainc(alpha, beta, x))])
    out.append(table("BETA_INC", "(a, b, x, I_x(a, b)) from scipy.special.betainc.", rows))

    rows = [[f(m), f(np.log(2) + m / 2 * np.log(np.pi) - special.gammaln(m / 2))] for m in MS]
    out.append(table("LOG_SPHERE_AREA", "(M, ln|S^{M-1}|).", rows))
    return out


# ---------------------------------------------------------------- distributions

def vmf_mp(m, k):
    """(log C, KL, dKL/dk, entropy) of vMF on S^{m-1} from the closed forms, mpmath."""
    m, k = mp.mpf(m), mp.mpf(k)
    nu = m / 2 - 1
    i0, i1 = mp.besseli(nu, k), mp.besseli(nu + 1, k)
    a = i1 / i0
    logc = nu * mp.log(k) - m / 2 * mp.log(2 * mp.pi) - mp.log(i0)
    logs = mp.log(2) + m / 2 * mp.log(mp.pi) - mp.loggamma(m / 2)
    kl = k * a + logc + logs
    dkl = k * (1 - a * a) - (m - 1) * a
    return logc, kl, dkl, logs - kl


def vmf_tables():
    rows, dens = [], []
    for m in MS:
        mu = np.zeros(m)
        mu[0] = 1.0
        for k in KAPPAS:
            if m == 2:
                d = stats.vonmises(k)
                logc = d.logpdf(0.0) - k
                ent = d.entropy()
            else:
                d = stats.vonmises_fisher(mu, k)
                logc = d.logpdf(mu) - k
                ent = d.entropy()
            logc_mp, kl, dkl, ent_mp = vmf_mp(m, k)
            close(logc, logc_mp, 1e-11, f"vMF log C M={m} k={k}")
            close(ent, ent_mp, 1e-9, f"vMF entropy M={m} k={k}") if abs(ent_mp) > 1e-3 else None
            # KL from SciPy's pieces where it is not a small difference of large terms.
            if k >= 1.0:
                a = special.ive(m / 2, k) / special.ive(m / 2 - 1, k)
                logs = np.log(2) + m / 2 * np.log(np.pi) - special.gammaln(m / 2)
                close(k * a + logc + logs, kl, 1e-9, f"vMF KL M={m} k={k}")
            rows.append([f(m), f(k), f(logc), f(ent), f(kl), f(dkl)])
            for w in COSINES:
                z = np.zeros(m)
                z[0], z[1] = w, np.sqrt(1 - w * w)
                lp = stats.vonmises.logpdf(np.arccos(w), k) if m == 2 else d.logpdf(z)
                ref = k * mp.mpf(w) + logc_mp
                close(lp, ref, 1e-10, f"vMF logpdf M={m} k={k} w={w}")
                # M = 2 goes through arccos and cos, whose last bit depends on the CPU's
                # vector unit (NumPy's dispatch): the table keeps mpmath's value there, so
                # that it is the same on every machine; SciPy agrees to 1e-10 (above).
                dens.append([f(m), f(k), f(w), f(ref if m == 2 else lp)])
    return [
        table("VMF", "(M, kappa, log C_M, entropy, KL to uniform, dKL/dkappa): log C and "
              "entropy from scipy.stats.vonmises_fisher (vonmises for M = 2), KL and "
              "dKL/dkappa from the closed forms in mpmath.", rows),
        table("VMF_LOGPDF", "(M, kappa, w = mu.z, log density) from scipy.stats.", dens),
    ]


def ps_mp(m, k):
    """(-ln N, entropy, KL, dKL/dk) of the Power Spherical law, mpmath."""
    m, k = mp.mpf(m), mp.mpf(k)
    beta = (m - 1) / 2
    alpha = beta + k
    ln_n = (alpha + beta) * mp.log(2) + mp.loggamma(alpha) - mp.loggamma(alpha + beta) \
        + beta * mp.log(mp.pi)
    ent = ln_n - k * (mp.log(2) + mp.psi(0, alpha) - mp.psi(0, alpha + beta))
    logs = mp.log(2) + m / 2 * mp.log(mp.pi) - mp.loggamma(m / 2)
    kl = logs - ent
    dkl = k * (mp.psi(1, alpha) - mp.psi(1, alpha + beta))
    return -ln_n, ent, kl, dkl


def ps_tables():
    rows, dens = [], []
    for m in MS:
        for k in KAPPAS:
            neg_ln_n, ent, kl, dkl = ps_mp(m, k)
            beta = (m - 1) / 2
            alpha = beta + k
            # The same closed forms with scipy.special in float64.
            ln_n = (alpha + beta) * np.log(2) + special.gammaln(alpha) \
                - special.gammaln(alpha + beta) + beta * np.log(np.pi)
            ent64 = ln_n - k * (np.log(2) + special.digamma(alpha) - special.digamma(alpha + beta))
            dkl64 = k * (special.polygamma(1, alpha) - special.polygamma(1, alpha + beta))
            close(-ln_n, neg_ln_n, 1e-11, f"PS ln N M={m} k={k}")
            close(ent64, ent, 1e-8, f"PS entropy M={m} k={k}") if abs(ent) > 1e-2 else None
            close(dkl64, dkl, 1e-5, f"PS dKL M={m} k={k}")
            rows.append([f(m), f(k), f(neg_ln_n), f(ent), f(kl), f(dkl)])
            for w in COSINES:
                lp = k * mp.log(1 + mp.mpf(w)) + neg_ln_n
                dens.append([f(m), f(k), f(w), f(lp)])
    return [
        table("PS", "(M, kappa, -ln N, entropy, KL to uniform, dKL/dkappa), closed forms "
              "in mpmath (cross-checked against scipy.special gammaln/digamma/polygamma).",
              rows),
        table("PS_LOGPDF", "(M, kappa, w = mu.z, log density), mpmath.", dens),
    ]


HEADER = ("# @generated by host-tools/reference/golden.py (numpy {np}, scipy {sp}, "
          "mpmath {mp}); do not edit.\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    import scipy
    head = HEADER.format(np=np.__version__, sp=scipy.__version__, mp=mp.__version__)
    for name, text in special_tables() + vmf_tables() + ps_tables():
        with open(os.path.join(OUT, name), "w") as fh:
            fh.write(head + text)
        print("wrote", os.path.join("tests", "golden", name))


if __name__ == "__main__":
    main()
