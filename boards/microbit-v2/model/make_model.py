#!/usr/bin/env python3
"""Synthetic accelerometer windows for the micro:bit v2 example, as the CSV `hvae train`
reads (NumPy only).

Four activities, 50 Hz, windows of WINDOW = 32 samples in g (what the LSM303AGR gives
at +-2 g, divided by 1000 from milli-g): resting flat, held upright (slow sway), walking
(about 2 steps per second) and shaking (4-7 Hz, up to the sensor's 2 g range). Every
window is turned into the 12 features of `boards/accel-features/src/lib.rs` -- this
file and that one must compute the same thing:

    mean x, y, z | std x, y, z | |a|: mean, std, min, max | mean | d|a| | | crossing rate

(std is the population standard deviation; the crossing rate is the fraction of the 31
steps where |a| crosses its window mean.)

Regenerate the model compiled into the firmware (from the repository root):

    python3 boards/microbit-v2/model/make_model.py > /tmp/acc.csv
    cargo run --release -p hvae-host-tools -- train --data /tmp/acc.csv --clusters 4 \\
        --latent 3 --hidden 16 --seed 1 --out boards/microbit-v2/model/acc.hvae

and its int8 form (`--features int8`), calibrated on the same windows:

    cargo run --release -p hvae-host-tools -- export --model boards/microbit-v2/model/acc.hvae \\
        --quantize int8 --data /tmp/acc.csv --check --format bin \\
        --out boards/microbit-v2/model/acc_int8.hvae

The blobs are the only committed form: the example's build.rs writes their Rust
sources (what `hvae export --format rust` writes) at build time.
"""

import sys

import numpy as np

RATE = 50.0
WINDOW = 32
PER_CLASS = 300


def unit(v):
    return v / np.linalg.norm(v)


def tilted(rng, base, max_deg):
    """`base` turned by a random angle up to `max_deg` about a random axis."""
    axis = unit(np.cross(base, rng.normal(size=3)))
    a = np.radians(rng.uniform(0, max_deg))
    return base * np.cos(a) + np.cross(axis, base) * np.sin(a) + axis * np.dot(axis, base) * (
        1 - np.cos(a))


def window(rng, activity):
    t = np.arange(WINDOW) / RATE
    if activity == 0:  # resting flat
        g = tilted(rng, np.array([0.0, 0.0, -1.0]), 10)
        a = np.tile(g, (WINDOW, 1)) + rng.normal(0, 0.01, (WINDOW, 3))
    elif activity == 1:  # held upright, slow sway
        g = tilted(rng, np.array([0.0, -1.0, 0.0]), 20)
        sway = 0.03 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 2 * np.pi))
        a = np.tile(g, (WINDOW, 1)) + np.outer(sway, unit(rng.normal(size=3)))
        a += rng.normal(0, 0.02, (WINDOW, 3))
    elif activity == 2:  # walking: a bump per step along gravity
        g = tilted(rng, np.array([0.0, -1.0, 0.0]), 30)
        f = rng.uniform(1.6, 2.2)
        bump = 0.35 * np.abs(np.sin(np.pi * f * t + rng.uniform(0, np.pi))) - 0.22
        a = np.tile(g, (WINDOW, 1)) + np.outer(bump, g) + rng.normal(0, 0.05, (WINDOW, 3))
    else:  # shaking
        g = unit(rng.normal(size=3))
        f = rng.uniform(4.0, 7.0)
        shake = 1.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        a = np.tile(g, (WINDOW, 1)) + np.outer(shake, unit(rng.normal(size=3)))
        a += rng.normal(0, 0.1, (WINDOW, 3))
    # The sensor's +-2 g range and its 1 mg resolution.
    return np.round(np.clip(a, -2.0, 2.0) * 1000.0) / 1000.0


def features(a):
    """The 12 features of one window (WINDOW x 3, in g); see boards/accel-features."""
    mean = a.mean(axis=0)
    std = np.sqrt(((a - mean) ** 2).mean(axis=0))
    m = np.sqrt((a ** 2).sum(axis=1))
    mm = m.mean()
    ms = np.sqrt(((m - mm) ** 2).mean())
    jerk = np.abs(np.diff(m)).mean()
    c = m - mm
    crossings = np.count_nonzero(c[1:] * c[:-1] < 0) / (WINDOW - 1)
    return np.concatenate([mean, std, [mm, ms, m.min(), m.max(), jerk, crossings]])


NAMES = ["mean_x", "mean_y", "mean_z", "std_x", "std_y", "std_z", "mag_mean", "mag_std",
         "mag_min", "mag_max", "jerk", "crossings"]


def main():
    rng = np.random.default_rng(0)
    out = sys.stdout
    out.write(",".join(NAMES + ["label"]) + "\n")
    for i in range(4 * PER_CLASS):
        activity = i % 4
        f = features(window(rng, activity))
        out.write(",".join(f"{v:.6g}" for v in f) + f",{activity}\n")


if __name__ == "__main__":
    main()
