"""How the local judge reads a number off one forward pass: the tokens of 0-100 after the
prefill and, for a tokenizer that splits numbers into digits, the token tree laid out after
the prompt.

The model-side half of the local backend, apart from its batching and bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.scoring_rule import NUMBERS


@dataclass
class NumberTokens:
    """How a tokenizer writes the integers 0-100 after the prompt (and prefill)."""

    single: bool  # every integer is one token: score it as the API does
    text: dict[int, str]  # token id -> text (single mode: every vocabulary entry)
    nodes: list[tuple[int, int]]  # digit tree: (token id, parent node or -1); empty in single mode
    paths: dict[int, list[tuple[int, int, int]]]  # integer -> [(parent node, token, node)] from the root


def number_tokens(tokenizer: Any, prefill: str) -> NumberTokens:
    """Token sequences of 0..100 as the model would write them after `prefill`."""
    base = tokenizer(prefill, add_special_tokens=False)["input_ids"] if prefill else []
    sequences = {}
    for n in NUMBERS:
        ids = tokenizer(prefill + str(n), add_special_tokens=False)["input_ids"]
        if ids[: len(base)] != base:
            raise TraitscopeError(
                f"judge.local.prefill {prefill!r}: the tokenizer merges it with the number that follows; "
                "end the prefill with a space or a colon"
            )
        sequences[n] = ids[len(base) :]
    if all(len(s) == 1 for s in sequences.values()):
        vocab = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
        return NumberTokens(True, vocab, [], {})
    nodes: list[tuple[int, int]] = []
    index: dict[tuple[int, ...], int] = {}
    paths = {}
    for n, seq in sequences.items():
        path = []
        parent = -1
        for k in range(len(seq)):
            prefix = tuple(seq[: k + 1])
            if prefix not in index:
                index[prefix] = len(nodes)
                nodes.append((seq[k], parent))
            path.append((parent, seq[k], index[prefix]))
            parent = index[prefix]
        paths[n] = path
    return NumberTokens(False, {}, nodes, paths)


def _digit_start_mask(tokenizer: Any, vocab_size: int) -> Any:
    """Vocabulary entries whose text starts with an ASCII digit: they would extend a number."""
    import torch

    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(len(tokenizer), vocab_size)):
        text = tokenizer.decode([i])
        mask[i] = bool(text) and text[0].isascii() and text[0].isdigit()
    return mask


def tree_number_probs(logits: Any, numbers: NumberTokens, digit_ids: Any) -> list[dict[int, float]]:
    """P(n) for every integer 0-100 per row of `tree_logits`' output, all rows at once;
    `digit_ids`: the vocabulary entries that start with a digit (`_digit_start_mask`'s).

    P(n) = P(its digits in turn) x P(no digit follows its last node). Read with gathers over
    the whole batch instead of a float per path step: on a GPU each of those ~190 reads per
    judgement waited for the device. Rows go through float32 in chunks of ~256 MB.
    """
    import torch

    device = logits.device
    steps = [(k, parent + 1, token) for k, n in enumerate(NUMBERS) for parent, token, _ in numbers.paths[n]]
    number, node, token = (torch.tensor(c, device=device) for c in zip(*steps))
    last = torch.tensor([numbers.paths[n][-1][2] + 1 for n in NUMBERS], device=device)
    digits = digit_ids.to(device)
    chunk = max(1, int(256e6 // (4 * logits.shape[1] * logits.shape[2])))
    out = []
    for start in range(0, logits.shape[0], chunk):
        x = logits[start : start + chunk].float()  # [c, 1 + nodes, vocab]
        total = torch.logsumexp(x, -1)
        logp = torch.zeros(x.shape[0], len(NUMBERS), device=device)
        logp.index_add_(1, number, x[:, node, token] - total[:, node])
        ends = (1 - (torch.logsumexp(x[..., digits], -1) - total).exp()).clamp(min=0)
        out.append(logp.exp() * ends[:, last])
    return [dict(zip(NUMBERS, row)) for row in torch.cat(out).tolist()]


def tree_logits(model: Any, rows: list[list[int]], nodes: list[tuple[int, int]]) -> Any:
    """Logits after each prompt's last token and after every node of a token tree, one pass.

    Rows are left-padded; after each row's prompt come the tree's nodes, each attending to the
    prompt, its ancestors and itself, at position (prompt length - 1 + depth). A prefix that
    every row shares runs once (`prefix.prefill_prefix`). Returns [rows, 1 + n_nodes, vocab].
    """
    import torch
    from transformers import DynamicCache

    from traitscope.generation.cuda_graphs import additive_mask
    from traitscope.generation.decode_loop import _cache_keyword
    from traitscope.generation.prefix import Prefixes, prefill_prefix, shared_prefix

    device = next(model.parameters()).device
    shared = shared_prefix(rows, list(range(len(rows))))
    suffixes = [r[shared:] for r in rows]
    b, width, t = len(rows), max(map(len, suffixes)), len(nodes)
    depth = []
    for _, parent in nodes:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    ids = torch.full((b, width + t), 0, dtype=torch.long)
    allowed = torch.zeros((b, width + t, shared + width + t), dtype=torch.bool)
    position = torch.zeros((b, width + t), dtype=torch.long)
    tree = torch.tensor([tok for tok, _ in nodes], dtype=torch.long)
    ancestors = torch.eye(t, dtype=torch.bool)
    for j, (_, parent) in enumerate(nodes):
        if parent >= 0:
            ancestors[j] |= ancestors[parent]
    for r, suffix in enumerate(suffixes):
        n = len(suffix)
        pad = width - n
        ids[r, pad:width] = torch.tensor(suffix)
        ids[r, width:] = tree
        allowed[r, :, :shared] = True
        real = torch.arange(shared + pad, shared + width)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        allowed[r, pad:width][:, real] = causal
        allowed[r, width:, real] = True
        allowed[r, width:, shared + width :] = ancestors
        allowed[r, :pad, shared + pad - 1 if pad else 0] = True  # padding rows see something finite
        position[r, pad:width] = torch.arange(shared, shared + n)
        position[r, width:] = shared + n - 1 + torch.tensor(depth, dtype=torch.long)
    keyword = _cache_keyword(model)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        if shared:
            prefill_prefix(model, Prefixes.single(rows[0][:shared], b, device), cache, keyword, {}, [])
        out = model(
            input_ids=ids.to(device),
            attention_mask=additive_mask(allowed[:, None].to(device), model.dtype),
            position_ids=position.to(device),
            use_cache=True,
            logits_to_keep=t + 1,
            **{keyword: cache},
        )
    return out.logits
