#!/usr/bin/env bash
# The scale rehearsal (issue 29): run a group of the full-scale Gemma-2-2B plan's jobs through
# Snakemake on one GPU machine and measure every job: wall time, GPU busy share, peak GPU memory,
# tokens/s, judge calls (collect.py). One call prepares what it needs (prepare.py device: model,
# data, config; kept on a machine still warm from the last call, as is results/, so a group whose
# inputs a warm machine already holds starts from them).
#   bash benchmarks/plan_gpu/plan_gpu.sh [options] GROUP [-- SNAKEMAKE-ARGS]
# GROUP (each with the jobs it needs upstream):
#   dry        nothing runs: every group's jobs (Snakemake -n), $OUT/dry.json for aggregate.py
#   traits     trait prompts, captures with generation, judge filter, vectors, evaluations,
#              agreement, summary, steering check
#   captures   the base model's captures of external, prefill and transfer sets (no trait chain)
#   em         the EM chain but its analysis: both finetunes, answers of 3 variants, their judge
#   backdoor   backdoor data, finetune, pair captures, the SAE's capture and training, SAE features
#   cmaes      CMA-ES and held-out scoring of the 3 traits, with their trait chain
#   all        the whole plan
# and one call's samples of every kind of model job, whose twins aggregate.py prices by them:
#   sample-traits   the evil trait's chain (capture with generation, judge filter, vectors,
#                   agreement) and CMA-ES on it (if unfinished, projected from its generations)
#   sample-em       the insecure.jsonl finetune, the EM answers of the base model and their judge
#   sample-captures the prefill 2x2, HarmBench, BeaverTails (one job), a transfer set, the SAE's
#                   set, the backdoor finetune and pairs, and the SAE's training (on the CPU)
#   custom     only the SNAKEMAKE-ARGS targets
# Options: --scale full|tiny (tiny: a 4-layer model and small data, for a CPU), --beavertails
# 30k_test|330k_test (the plan with the 30k_test sample, or the whole 330k_test split), --budget S
# (seconds for the whole call, default 570: Snakemake is stopped in time to collect, and
# unfinished jobs are reported with their progress), --cores N (default: all), --mem-mb M (memory
# Snakemake schedules jobs into, default 110000 of the machine's 128 GB).
# Writes $OUT/<group>.{json,tsv,snakemake.log,logs.tar.gz,gpu.csv.gz} (OUT defaults to
# results/plan_gpu/out); aggregate.py joins several calls' files into one table.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
scale=full beavertails=30k_test budget=570 cores=$(nproc) mem_mb=110000
while [ $# -gt 0 ]; do
    case $1 in
        --scale) scale=$2; shift 2 ;;
        --beavertails) beavertails=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --mem-mb) mem_mb=$2; shift 2 ;;
        *) break ;;
    esac
done
group=${1:?usage: plan_gpu.sh [options] GROUP [-- SNAKEMAKE-ARGS]}
shift
[ "${1:-}" = -- ] && shift
targets_of() {  # the Snakemake arguments that select a group's jobs
    case $1 in
        traits) echo --until trait_summary trait_agreement trait_filter steering_check ;;
        captures) echo --until capture --omit-from trait_prompts em_prompts backdoor_data dataset_file \
            results/prompts/harmless_train_sae.parquet ;;
        em) echo --until em_judge ;;
        backdoor) echo --until backdoor_sae_features ;;
        cmaes) echo --until cmaes_heldout ;;
        sample-traits) echo results/traits/gemma2/safety/evil/judge_{filter,agreement}.json \
            results/cmaes/safety/evil/heldout.json ;;
        sample-em) echo results/finetune/gemma2_insecure/loss.json \
            results/emergent_misalignment/behaviour/base.json ;;
        sample-captures) echo results/capture/gemma2/{prefill_conditions,harmbench_all,harmless_val}/capture.json \
            results/capture/gemma2/beavertails.sample/capture.json \
            results/capture/gemma2{,_backdoored}/backdoor_pairs/capture.json \
            results/backdoor_detection/sae_training.json ;;
        all | custom) ;;
        *) echo "unknown group $1" >&2; return 2 ;;
    esac
}
groups=(all traits captures em backdoor cmaes sample-traits sample-em sample-captures)
if [ "$group" != dry ]; then
    targets_of "$group" >/dev/null || exit 2
    read -r -a targets < <(targets_of "$group"; echo)
fi
out=${OUT:-results/plan_gpu/out}
work=results/plan_gpu
mkdir -p "$out" "$work/bin"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The device's Python runs with PYTHONDONTWRITEBYTECODE=1 over a site-packages that holds no
# bytecode, so every job compiled torch's and transformers' modules again (importing both: 12-17 s
# a job). A pip-installed environment on a cluster has that bytecode: the first process to import
# a module (prepare.py, before any job) writes it here, the jobs read it.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=$PWD/$work/pycache
# the interpreter itself: a wrapper such as pyenv's puts its own bin/ (with any installed
# `traitscope`) before the PATH set below
py=$(python3 -c 'import sys; print(sys.executable)')

# What the machine lacks, from the carried wheels (nothing is fetched there): into its python,
# else (not writable) every wheel into a folder put first on PYTHONPATH
export PYTHONPATH=$PWD/$work/site:$PYTHONPATH
if ! "$py" -c 'import snakemake, jsonschema, gguf, cma, openai' 2>/dev/null; then
    "$py" -m pip install -q --no-index --find-links .wheels snakemake jsonschema gguf cma openai ||
        "$py" -m pip install -q --no-index --no-deps --target "$work/site" .wheels/*.whl
fi
missing=$("$py" -c '
import importlib.util as u
names = "torch transformers peft pandas pyarrow numpy scipy sklearn statsmodels matplotlib seaborn yaml"
print(" ".join(n for n in names.split() if u.find_spec(n) is None))')
if [ -n "$missing" ]; then
    "$py" -m pip install -q --no-index --find-links .wheels $missing ||
        echo "plan_gpu: missing here and not in .wheels: $missing (the jobs that import it fail)" >&2
fi

# mtime is left out of the rerun triggers: each call lays the working tree anew, and a tracked
# input (a trait file) with a new mtime must not rerun what a warm machine already holds
common=(--resources gpu=1 mem_mb="$mem_mb" --configfile "$work/config.yaml"
    --rerun-triggers params input code software-env --keep-going)
if [ "$group" = dry ]; then  # the config alone: no model, no data
    "$py" benchmarks/plan_gpu/prepare.py config --scale "$scale" --beavertails "$beavertails" >/dev/null
    for g in "${groups[@]}"; do
        read -r -a targets < <(targets_of "$g"; echo)
        # --forceall: the jobs of a fresh clone, whatever results/ holds
        "$py" -m snakemake -n --forceall --cores "$cores" "${common[@]}" "${targets[@]}" >"$work/dry-$g.log" 2>&1
    done
    "$py" benchmarks/plan_gpu/collect.py --dry "${groups[@]}" --work "$work" --out "$out"
    exit
fi

# The rules' `traitscope` (no console script there): job_wrapper.py records each job
export PLAN_GPU_JOBS=$PWD/$work/jobs.jsonl
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$py" "$PWD/benchmarks/plan_gpu/job_wrapper.py" >"$work/bin/traitscope"
chmod +x "$work/bin/traitscope"
export PATH=$PWD/$work/bin:$PATH

"$py" benchmarks/plan_gpu/prepare.py device --scale "$scale" --beavertails "$beavertails" >"$work/prepare.out"

# First up to the trait judgements, whose scores perfect_judge.py makes a good judge's, then the
# rest (phase 2: the call's own selection). Phase 1 omits the judges' readers, joined to the
# selection's own --omit-from list (the last --omit-from given is the one Snakemake keeps).
user_args=("$@")
selection=("${targets[@]}" "${user_args[@]}")
first=() omit=(trait_filter trait_vectors trait_agreement) in_omit=0 until=0
for a in "${selection[@]}"; do
    case $a in
        --omit-from) in_omit=1 ;;
        -*) in_omit=0; first+=("$a"); [[ $a == --until || $a == --until=* ]] && until=1 ;;
        *) if [ "$in_omit" = 1 ]; then omit+=("$a"); else first+=("$a"); fi ;;
    esac
done
# Snakemake drops an --until once --omit-from cuts jobs off the plan, and selects the default
# targets' jobs instead (session 20: the whole plan's model jobs ran). So where the selection is
# by --until, phase 1 takes its jobs' output files, from a dry-run, as targets.
if [ "$until" = 1 ]; then
    if ! "$py" -m snakemake -n --forceall --cores "$cores" "${common[@]}" "${selection[@]}" \
        >"$work/dry-until.out" 2>"$work/dry-until.log"; then
        echo "plan_gpu: the --until selection's dry-run failed ($work/dry-until.log)" >&2
        exit 2
    fi
    mapfile -t first < <(sed -n 's/^    output: //p' "$work/dry-until.out" | tr ',' '\n' | sed 's/^ *//' | sort -u)
    [ "${#first[@]}" -gt 0 ] || { echo "plan_gpu: the --until selection has no jobs ($work/dry-until.out)" >&2; exit 2; }
fi

# GPU samples every 200 ms: the device's busy share and memory, and each process's memory
samplers=()
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
        -lms 200 >"$work/gpu.csv" &
    samplers+=($!)
    nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader,nounits \
        -lms 200 >"$work/gpu_apps.csv" 2>/dev/null &
    samplers+=($!)
fi

# the Slurm profile's threads per rule, so that CPU-side work runs as on the cluster
read -r -a threads < <("$py" -c '
import yaml
profile = yaml.safe_load(open("profiles/slurm/config.v8+.yaml"))
print(" ".join(f"{r}={n}" for r, n in profile["set-threads"].items()))')
snakemake() {  # snakemake LOG ARGS...: one run, stopped (SIGINT) when the call's time is up
    local left=$((budget - ($(date +%s) - started) - 45))
    [ "$left" -gt 0 ] || return 124
    # common ends in a flag: the targets after it are not taken for a list option's values
    timeout -s INT -k 30 "$left" "$py" -m snakemake --cores "$cores" --set-threads "${threads[@]}" \
        "${common[@]}" "${@:2}" >"$1" 2>&1
}
rm -f "$work"/snakemake.[12].log
: >"$PLAN_GPU_JOBS"
: >"$work/snakemake.1.log"
run_started=$(date +%s.%N)
set +e
snakemake "$work/snakemake.1.log" "${first[@]}" --omit-from "${omit[@]}"
status=$?
if [ "$status" -ne 124 ]; then  # 124: the time ran out
    "$py" benchmarks/plan_gpu/perfect_judge.py
    snakemake "$work/snakemake.2.log" "${selection[@]}"
    status=$?
fi
set -e
run_ended=$(date +%s.%N)
for pid in "${samplers[@]}"; do kill "$pid" 2>/dev/null || true; done

logs=("$work"/snakemake.[12].log)
"$py" benchmarks/plan_gpu/collect.py --group "$group" --status "$status" --call-started "$started" \
    --started "$run_started" --ended "$run_ended" --work "$work" --out "$out" --logs "${logs[@]}"
tar -czf "$out/$group.logs.tar.gz" results/logs "$work/prepare.out" 2>/dev/null || true
cat "${logs[@]}" >"$out/$group.snakemake.log"
[ -s "$work/gpu.csv" ] && gzip -c "$work/gpu.csv" >"$out/$group.gpu.csv.gz"
echo "plan_gpu $group: snakemake exit $status, $(($(date +%s) - started)) s in all; $out/$group.json"
