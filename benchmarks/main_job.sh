#!/usr/bin/env bash
# The main job's wall time from an empty results/, in two steps: the core job (trait vectors,
# steering check, captures, prefill and external analyses), then what enabling every other
# experiment (emergent misalignment, steering optimisation) adds (Snakemake reruns nothing the
# core already made). Run it in a fresh clone;
# extra arguments go to snakemake, e.g. --config data_mirror=../shared/data.
set -euo pipefail
cores=${CORES:-2}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); torch capability: $(python3 -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'); cores: $cores"
if [ -e results ]; then echo "results/ exists: run from an empty checkout" >&2; exit 2; fi
overlay=$(mktemp --suffix .yaml)
trap 'rm -f "$overlay"' EXIT
echo "experiments: {emergent_misalignment: {enabled: false}, steering_optimisation: {enabled: false}}" >"$overlay"
t0=$(date +%s)
python3 -m snakemake --cores "$cores" --quiet rules "$@" --configfile "$overlay"
t1=$(date +%s)
python3 -m snakemake --cores "$cores" --quiet rules "$@"
t2=$(date +%s)
echo "core job: $((t1 - t0)) s; every experiment enabled adds $((t2 - t1)) s; whole job $((t2 - t0)) s"
