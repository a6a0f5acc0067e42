#!/usr/bin/env bash
# Regenerates the compiled-in model and the golden outputs the on-target tests compare
# against (run from anywhere; takes a few seconds):
#   1. trains the digits model of the budget size (64 inputs, hidden 32, latent 8,
#      K = 10, Power Spherical, seed 1) with the host tool: firmware/model/digits.hvae
#      (its scores: docs/benchmarks.md); without the host's neighbour contrast
#      (`--contrast 0`) and with the centres from k-means on the mean directions
#      (`--init latent --kmeans-restarts 1`), for all 100 epochs (`--max-steps 0`), the
#      training every on-target figure and scenario bar was measured with;
#   2. exports its int8 form as an int8 blob: firmware/model/digits_int8.hvae (bench,
#      selftest, cluster_int8, the int8 checks of run-tests.sh);
#   3. trains the `adapt` program's model (hidden 16): firmware/model/digits_m0.hvae;
#   4. writes firmware/model/golden.rs: 64 rows of the digits data and the core's
#      `segment` outputs for 16 of them, computed on the host (firmware/host).
#
# The blobs are the only committed form of the models: the firmware's build.rs writes
# their Rust sources (what `hvae export --format rust` writes) into the build's OUT_DIR.
# To build the firmware with another model without touching these files, point
# HVAE_MODEL at a weight blob (see docs/device.md); `selftest` checks the golden outputs
# and so needs this model.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
hvae() { cargo run --quiet --release -p hvae-host-tools -- "$@"; }
hvae train --data host-tools/data/digits.csv.gz --clusters 10 --latent 8 --hidden 32 \
  --contrast 0 --init latent --max-steps 0 --kmeans-restarts 1 --seed 1 --quiet \
  --out firmware/model/digits.hvae
hvae export --model firmware/model/digits.hvae --quantize int8 \
  --data host-tools/data/digits.csv.gz --format bin --out firmware/model/digits_int8.hvae
# The `adapt` program's model (the micro:bit's 16 KiB of RAM hold 16 hidden units).
hvae train --data host-tools/data/digits.csv.gz --clusters 10 --latent 8 --hidden 16 \
  --contrast 0 --init latent --max-steps 0 --kmeans-restarts 1 --seed 1 --quiet \
  --out firmware/model/digits_m0.hvae
cargo run --quiet --release -p hvae-firmware-host -- \
  golden firmware/model/digits.hvae host-tools/data/digits.csv.gz firmware/model/golden.rs
