#!/usr/bin/env bash
# Download the wheels of benchmarks/plan_gpu/wheels.txt for the GPU machine (CPython 3.12,
# manylinux x86-64) into .wheels/ (git-ignored; `run` carries it). A package PyPI has only as an
# sdist (connection-pool) is built into a pure-python wheel here.
#   bash benchmarks/plan_gpu/fetch_wheels.sh          # fill .wheels/
#   bash benchmarks/plan_gpu/fetch_wheels.sh check    # also resolve the install offline here
# `check` proves the closure: in a fresh venv of this machine's python (3.11: the same pins with
# its own binary wheels, in a temporary folder), with only numpy preinstalled, the device's
# install command must resolve from the wheels alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.wheels
mkdir -p "$dest"
mapfile -t pins < <(grep -v '^#' benchmarks/plan_gpu/wheels.txt)
# the device's install command (plan_gpu.sh runs the same)
want=(snakemake jsonschema gguf cma openai)

download() {  # download PYTHON_VERSION DEST
    local failed=()
    for pin in "${pins[@]}"; do
        pip download -q --no-deps --only-binary=:all: --python-version "$1" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 -d "$2" "$pin" \
            2>/dev/null || failed+=("$pin")
    done
    for pin in "${failed[@]}"; do  # sdist only: build a wheel (pure python) here
        pip wheel -q --no-deps --no-binary=:all: -w "$2" "$pin"
    done
}

download 3.12 "$dest"
echo "$dest: $(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1)"

if [ "${1:-}" = check ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    download "$py" "$tmp/wheels"
    pip download -q --no-deps --only-binary=:all: -d "$tmp/numpy" numpy
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q --no-index --find-links "$tmp/numpy" numpy
    "$tmp/venv/bin/pip" install -q --no-index --find-links "$tmp/wheels" "${want[@]}"
    "$tmp/venv/bin/python" -c 'import snakemake, jsonschema, gguf, cma, openai; print("imports: ok")'
    "$tmp/venv/bin/python" -m snakemake --version
    "$tmp/venv/bin/pip" list --format=freeze | tr 'A-Z_' 'a-z-' | sort >"$tmp/installed"
    echo "installed in the fresh venv: $(wc -l <"$tmp/installed") packages"
    # every pin that the install needed came from the wheels; list the pins it did not need
    unused=$(grep -v '^#' benchmarks/plan_gpu/wheels.txt | tr 'A-Z_' 'a-z-' | sort | comm -23 - "$tmp/installed")
    echo "pins not needed by the install: ${unused:-none}"
fi
