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

import os
import sys

from sklearn.datasets import load_digits

from csv_gz import write_csv_gz


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "digits.csv.gz")
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    assert x.shape == (1797, 64) and x.min() >= 0.0 and x.max() <= 1.0
    # Each value is k/16, written exactly (`0`, `0.0625`, `1`).
    write_csv_gz(out, digits.feature_names, x, y)
    print(f"wrote {out}: {x.shape[0]} rows x {x.shape[1]} features + label")


if __name__ == "__main__":
    main()
