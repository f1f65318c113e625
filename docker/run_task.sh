#!/bin/sh
# The BraTS container contract for one task, on top of `python -m infer` (the same engine, not a copy).
#   2025 style:  docker run --network none -v IN:/input:ro -v OUT:/output IMAGE          (no arguments)
#   older style: docker run ... IMAGE infer --data_path=/mlcube_io0 --output_path=/mlcube_io2 [--parameters_file=F]
#                (each option also as two words: --parameters_file F)
# BRAINSYN_INPUT / BRAINSYN_OUTPUT (default /input, /output) say where the mounted folders are.
# Exit status: 0 when every case was written, non-zero when any case failed (per-case errors on stderr).
set -eu
task="$1"
shift
[ "${1:-}" = "infer" ] && shift
drop_next=
for arg in "$@"; do  # drop options the legacy orchestrator passes that this engine has no use for
  shift
  if [ -n "$drop_next" ]; then drop_next=; continue; fi
  case "$arg" in --parameters_file=*) ;; --parameters_file) drop_next=1 ;; *) set -- "$@" "$arg" ;; esac
done
exec python -m infer --task "$task" --input "${BRAINSYN_INPUT:-/input}" --output "${BRAINSYN_OUTPUT:-/output}" "$@"
