#!/usr/bin/env bash
# make test's pytest in both number formats, on this machine, in a fresh clone of HEAD beside
# this checkout (so ../shared/data resolves as here, and the data-mirror tests run): once with `dtype: auto` deciding natively,
# once with TRAITSCOPE_CPU_BF16=0 (auto -> fp32, as on an AVX2-only CPU). One line per mode with
# pytest's summary and the wall seconds; README's times table is generated from these lines.
#
# Usage: benchmarks/suite_times.sh OUT.txt
set -euo pipefail
out=$(realpath "$1")
repo=$(git rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)
work=$(mktemp -d "$(dirname "$repo")/suite.XXXX")  # the clone itself: its ../shared is ours
git clone -q "$repo" "$work"
git -C "$work" checkout -q "$commit"
logs=$(mktemp -d)
{
  echo "# benchmarks/suite_times.sh at ${commit:0:7}"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "cores: $(nproc)"
} >"$out"
for mode in native fp32; do
  (
    cd "$work"
    export PYTHONPATH="$work/src"
    [ "$mode" = fp32 ] && export TRAITSCOPE_CPU_BF16=0
    start=$(date +%s)
    python3 -m pytest -q -p no:cacheprovider >"$logs/$mode.log" 2>&1 || true
    summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$logs/$mode.log" | tail -1 | tr -d '=' | xargs)
    echo "suite $mode: $(($(date +%s) - start)) s; $summary" >>"$out"
  )
done
cat "$out"
echo "clone in $work, logs in $logs"
