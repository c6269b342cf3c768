"""Compare capture variants on the GPU (pooling included): eager, compiled submodules."""

import sys
import time

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from traitscope.capture import forward_batches, pool_batch
from traitscope.hooks import compile_blocks, decoder_layers

sys.path.insert(0, "benchmarks")
from capture_gpu import make_prompts  # noqa: E402


def timed(model, prompts, layers, mt, pools=True):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for b in forward_batches(model, prompts, layers, mt, progress=False):
        if pools:
            pool_batch(b, layers, ["last_prompt", "prompt_mean"])
    torch.cuda.synchronize()
    return sum(len(p.ids) for p in prompts) / (time.perf_counter() - t)


config = Gemma2Config(attn_implementation=sys.argv[1] if len(sys.argv) > 1 else "sdpa")
torch.manual_seed(0)
with torch.device("cuda"):
    model = Gemma2ForCausalLM(config).to(torch.bfloat16).eval()
prompts = make_prompts(2000, config.vocab_size, 20, 400)
layers = [8, 13, 17]
for mt in [32768, 65536]:
    timed(model, prompts[:300], layers, mt)
    print(
        f"eager max_tokens={mt}: pooled {timed(model, prompts, layers, mt):.0f} tok/s, "
        f"forward only {timed(model, prompts, layers, mt, False):.0f} tok/s",
        flush=True,
    )
compile_blocks(model)
t = time.perf_counter()
timed(model, prompts[:300], layers, 65536)
timed(model, prompts[-300:], layers, 65536)
print(f"compile warm-up {time.perf_counter() - t:.0f} s", flush=True)
for mt in [32768, 65536, 131072]:
    print(f"compiled max_tokens={mt}: pooled {timed(model, prompts, layers, mt):.0f} tok/s", flush=True)
print("blocks", type(decoder_layers(model)[0]).__name__)
