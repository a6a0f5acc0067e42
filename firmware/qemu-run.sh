#!/usr/bin/env sh
# cargo's runner for the firmware (.cargo/config.toml): `cargo run --release --bin NAME`
# ends up here as `qemu-run.sh --machine MACHINE ELF`. Builds the host tool (host/, for
# this machine; quick when it is up to date) and runs the program under qemu through it:
# the defmt log decoded on stdout, the program's semihosting exit status as this script's.
# Nothing is installed; qemu is started by the host tool only. Extra `hvae-firmware-host
# run` options (e.g. `--serial tcp:127.0.0.1:PORT` to reach the UART, `--timeout SECS`)
# can be given in HVAE_RUN_ARGS.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
# A member of the root's workspace, built there (where the firmware's default target does
# not apply) into the root's target directory, whatever CARGO_TARGET_DIR says for the
# firmware.
(cd "$here/.." && cargo build --quiet --release -p hvae-firmware-host --target-dir target)
# shellcheck disable=SC2086 # HVAE_RUN_ARGS is split into options on purpose.
exec "$here/../target/release/hvae-firmware-host" run "$@" ${HVAE_RUN_ARGS:-}
