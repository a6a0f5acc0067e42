"""Writes a data set the way the `hvae` tool reads it: a CSV with a header line, the
feature columns, then an integer `label` column, gzipped with no file name and mtime 0
(running a script twice gives the same bytes). Shared by make_digits.py and
suite/make_suite.py."""

import csv
import gzip
import io
import math
import os


def fmt_exact(v: float) -> str:
    """Shortest text that parses back to the same double (`5.1`, `0.0625`, `1`)."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def write_csv_gz(path, names, x, y, fmt=fmt_exact):
    """Writes features `x` (rows) and labels `y` (0..K-1) as a reproducible CSV.gz at
    `path` (through `path.tmp`, renamed when complete)."""
    assert "label" not in names and len(y) == len(x)
    assert all(len(row) == len(names) and all(math.isfinite(v) for v in row) for row in x)
    text = io.StringIO(newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(list(names) + ["label"])
    for row, label in zip(x, y):
        w.writerow([fmt(v) for v in row] + [int(label)])
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0: reproducible bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(text.getvalue().encode("ascii"))
    os.replace(tmp, path)
