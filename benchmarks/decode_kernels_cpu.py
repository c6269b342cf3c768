"""What two per-step kernels of CPU sampling cost at the shapes of a persona-trait capture's
decode step (SmolLM2-135M: 9 query and 3 key/value heads of 64, a 49,152-token vocabulary; ~90
rows a batch; 1 thread, as a main-job capture runs).

torch.multinomial is timed against a stand-in that draws the same distribution another way
(inverse CDF: one uniform a row against the cumulative probabilities), and SDPA, as the decoder
called it before, against the pipeline's attention, two matmuls with float32 scores
(`decode_attention.matmul_decode`). The inverse CDF draws every sampled answer anew; with it the
two number formats' statuses disagreed on three rows in session 30's precision run
(benchmarks/results/sampler_draw_precision_epyc.txt), so the pipeline keeps multinomial.

    python benchmarks/decode_kernels_cpu.py [--rows 90] [--kv 86] [--repeat 50]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from traitscope.generation.decode_attention import matmul_decode

VOCAB, HEADS, KV_HEADS, HEAD_DIM = 49152, 9, 3, 64


def per_call_ms(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def sampling(rows: int, repeat: int) -> tuple[float, float]:
    """torch.multinomial (an exponential draw per vocabulary entry) against inverse CDF."""
    probs = torch.softmax(torch.randn(rows, VOCAB) * 3, dim=-1)
    generator = torch.Generator().manual_seed(0)
    multinomial = per_call_ms(lambda: torch.multinomial(probs, 1, generator=generator), repeat)

    def inverse_cdf():
        u = torch.rand(rows, 1, generator=generator)
        return torch.searchsorted(probs.cumsum(-1), u).clamp_max(VOCAB - 1)

    return multinomial, per_call_ms(inverse_cdf, repeat)


def attention(rows: int, kv: int, dtype: torch.dtype, repeat: int) -> tuple[float, float]:
    """One decode step's attention (query length 1, left padding masked) by SDPA as the decoder
    called it (the query's heads packed onto their key/value head), and as two matmuls."""
    q = torch.randn(rows, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM, dtype=dtype)
    k, v = (torch.randn(rows, KV_HEADS, kv, HEAD_DIM, dtype=dtype) for _ in range(2))
    mask = torch.zeros(rows, 1, 1, kv, dtype=dtype)
    mask[: rows // 8, :, :, :5] = torch.finfo(dtype).min  # additive, as the static decoder's
    sdpa = per_call_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeat)
    return sdpa, per_call_ms(lambda: matmul_decode(q, k, v, mask, HEAD_DIM**-0.5), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=90)
    parser.add_argument("--kv", type=int, default=86, help="key/value length (prompt + answer so far)")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.rows} rows")
    base, other = sampling(args.rows, args.repeat)
    print(f"sampling   multinomial {base:7.2f} ms   inverse CDF {other:7.2f} ms   ratio {base / other:5.1f}x")
    for dtype in (torch.bfloat16, torch.float32):
        base, other = attention(args.rows, args.kv, dtype, args.repeat)
        name = str(dtype).removeprefix("torch.")
        print(
            f"attention  SDPA {name:8s} {base:7.2f} ms   matmuls {other:7.2f} ms   ratio {base / other:5.1f}x"
            f"   (kv {args.kv})"
        )


if __name__ == "__main__":
    main()
