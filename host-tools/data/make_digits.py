#!/usr/bin/env python3
"""Writes scikit-learn's 8x8 handwritten digits as `digits.csv.gz` beside this script.

The data ship inside scikit-learn (`sklearn.datasets.load_digits`); nothing is
downloaded. Output: a gzipped CSV with a header, 64 feature columns `pixel_R_C`
(row R, column C of the 8x8 image) holding the grey level divided by 16 (so in
[0, 1], each value exactly k/16), then an integer `label` column (0-9).
1797 rows. The gzip stream has no file name and mtime 0, so running the script
twice gives the same bytes.

Usage: host-tools/reference/.venv/bin/python host-tools/data/make_digits.py [OUT]
"""

import csv
import gzip
import io
import os
import sys

from sklearn.datasets import load_digits


def fmt(v: float) -> str:
    """Shortest text for k/16 that parses back exactly (`0`, `0.0625`, `1`)."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "digits.csv.gz")
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    assert x.shape == (1797, 64) and x.min() >= 0.0 and x.max() <= 1.0
    names = list(digits.feature_names) + ["label"]

    text = io.StringIO(newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(names)
    for row, label in zip(x, y):
        w.writerow([fmt(v) for v in row] + [int(label)])

    tmp = out + ".tmp"
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0: reproducible bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(text.getvalue().encode("ascii"))
    os.replace(tmp, out)
    print(f"wrote {out}: {x.shape[0]} rows x {x.shape[1]} features + label")


if __name__ == "__main__":
    main()
