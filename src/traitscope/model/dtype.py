"""Which number format a model runs in: the config's dtype, or for `auto` the fastest one
this machine computes well (bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere), with the
reason in one line for the job log."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from traitscope.errors import TraitscopeError


class DtypeChoice(NamedTuple):
    dtype: Any  # torch.dtype
    reason: str  # one line, e.g. "auto on cpu: AVX2 has no native bf16 -> float32"


CPU_BF16_SWITCH = "TRAITSCOPE_CPU_BF16"


def cpu_bf16_probe() -> dict[str, Any]:
    """torch's view of this CPU: the kernel level ATen dispatches to and the native bf16 instructions.

    `capability` is torch.backends.cpu.get_cpu_capability(): "DEFAULT", "AVX2", "AVX512", ... on x86
    (never "AVX512_BF16"); ATEN_CPU_CAPABILITY=avx2 lowers it. The flags are the hardware's, from
    cpuinfo via torch.cpu.get_capabilities(); a torch without that function reports none (fp32).

    TRAITSCOPE_CPU_BF16=1 reports an AVX512 CPU with native bf16 and =0 one without, whatever this
    CPU is, so `auto` decides as on the other class of machine: the whole test suite (or a run) can
    take the bf16 path on an AVX2 CPU (emulated, slower) or the fp32 path on a bf16 one.
    """
    import torch

    switch = os.environ.get(CPU_BF16_SWITCH, "").strip()
    if switch in ("0", "1"):
        native = switch == "1"
        return {
            "capability": "AVX512" if native else "AVX2",
            "avx512_bf16": native,
            "amx_bf16": False,
            "forced_by": f"{CPU_BF16_SWITCH}={switch}",
        }
    if switch:
        raise TraitscopeError(
            f"{CPU_BF16_SWITCH}={switch!r}: use 1 (decide as a bf16 CPU), 0 (as an fp32 one) or unset"
        )
    flags = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(flags.get("avx512_bf16")),
        "amx_bf16": bool(flags.get("amx_bf16")),
    }


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_dtype(
    name: str | None,
    device: str,
    cpu_probe: Callable[[], dict[str, Any]] = cpu_bf16_probe,
    cuda_bf16: Callable[[], bool] | None = None,
) -> DtypeChoice:
    """The config's dtype, or for `auto`/unset the fastest one this machine computes well.

    CUDA: bf16, fp16 where the GPU lacks bf16. CPU: bf16 only with native bf16 instructions
    (AVX512-BF16 or AMX) that ATen's AVX512 kernels use, else fp32: emulated bf16 on an AVX2 CPU
    runs 2-4x slower than fp32 (benchmarks/results/cpu_dtype_avx2.txt). The probes are parameters
    so tests can stand in for hardware they lack.
    """
    import torch

    if name not in (None, "auto"):
        if name not in _DTYPES:
            raise TraitscopeError(f"dtype {name!r} unknown; use auto, float32, bfloat16 or float16")
        return DtypeChoice(getattr(torch, _DTYPES[name]), "set in config")
    if device.startswith("cuda"):
        if (cuda_bf16 or torch.cuda.is_bf16_supported)():
            return DtypeChoice(torch.bfloat16, "auto on cuda: bf16 supported -> bfloat16")
        return DtypeChoice(torch.float16, "auto on cuda: no bf16 on this GPU -> float16")
    if not device.startswith("cpu"):
        return DtypeChoice(torch.float32, f"auto on {device}: only cpu and cuda are probed -> float32")
    cpu = cpu_probe()
    level = cpu["capability"]
    native = "+".join(flag for flag in ("avx512_bf16", "amx_bf16") if cpu.get(flag))
    where = f"auto on cpu ({cpu['forced_by']})" if cpu.get("forced_by") else "auto on cpu"
    if native and level.startswith("AVX512"):
        return DtypeChoice(torch.bfloat16, f"{where}: {level} with native {native} -> bfloat16")
    if native:
        return DtypeChoice(
            torch.float32, f"{where}: kernels capped at {level} leave {native} unused -> float32"
        )
    return DtypeChoice(torch.float32, f"{where}: {level} has no native bf16 -> float32")
