"""Profile compiled traitscope capture on the GPU: where the time goes (top CUDA kernels)."""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Gemma2Config, Gemma2ForCausalLM

from traitscope.capture.engine import forward_batches, pool_batch
from traitscope.model.hooks import compile_blocks

sys.path.insert(0, "benchmarks")
from capture_gpu import make_prompts  # noqa: E402


def run(model, prompts, layers, mt):
    for b in forward_batches(model, prompts, layers, mt, 0, "right", progress=False):
        pool_batch(b, layers, ["last_prompt", "prompt_mean"])
    torch.cuda.synchronize()


config = Gemma2Config(attn_implementation="sdpa")
torch.manual_seed(0)
with torch.device("cuda"):
    model = Gemma2ForCausalLM(config).to(torch.bfloat16).eval()
prompts = make_prompts(2000, config.vocab_size, 20, 400)
layers = [8, 13, 17]
compile_blocks(model)
run(model, make_prompts(400, config.vocab_size, 20, 400, seed=2), layers, 32768)
for attempt in range(2):
    t = time.perf_counter()
    run(model, prompts, layers, 32768)
    print(
        f"run {attempt}: {sum(len(p.ids) for p in prompts) / (time.perf_counter() - t):.0f} tok/s", flush=True
    )
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    run(model, prompts, layers, 32768)
    wall = time.perf_counter() - t
print(f"profiled wall {wall:.2f} s")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
