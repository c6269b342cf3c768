"""The generation engine: batched generation that records and steers as it goes.

generate (the loop every generating stage calls, and `generation_session`), prefix (prefill and
a shared prompt prefix), decode_loop (the DynamicCache decode loop), static_decode (decode over a
static cache, a CUDA graph per step), cuda_graphs (what the graphs need) and decode_attention
(the Triton decode-attention kernel). Loading a model, its chat template and its hooks are in
`traitscope.model`.
"""
