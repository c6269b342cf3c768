"""The pieces both stages steer and score with: the PCA basis, unit vectors and cosines,
steered generation with fixed seeds, the judge's trait and coherence scores and their
coherence gate, and the trait vector a stage starts from.

Separate from the stages so the optimisation and the held-out comparison generate, judge
and gate in exactly the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from traitscope.errors import TraitscopeError
from traitscope.experiments.steering_optimisation.settings import OptimisationSettings
from traitscope.judge import Item
from traitscope.model import chat


def pca_basis(
    capture_json: str | Path, prompts: str | Path, position: str, layer: int, components: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top principal directions (rows, unit, orthogonal) of the extraction split's activations
    at `layer`, their explained-variance ratios and the number of activations."""
    import torch

    from traitscope.vectors.labelled import labelled_activations

    table, x, layers = labelled_activations(capture_json, prompts, position)
    if layer not in layers:
        raise TraitscopeError(f"{capture_json}: layer {layer} was not captured; recapture the trait set")
    rows = (table["split"] == "extraction").to_numpy()
    acts = x[torch.tensor(rows)][:, layers.index(layer)].double().numpy()
    if len(acts) < 3:
        raise TraitscopeError(f"{prompts}: too few extraction activations for a PCA basis")
    centred = acts - acts.mean(0)
    _, singular, vh = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(acts) - 1)
    ratio = singular**2 / (singular**2).sum()
    return vh[:k], ratio[:k], len(acts)


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if n == 0:
        raise TraitscopeError("a steering direction of zero length")
    return v / n


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(np.asarray(a, float)) @ unit(np.asarray(b, float)))


def steered_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    vectors: list[np.ndarray | None],
    layer: int,
    s: OptimisationSettings,
    streams: list[int] | None = None,
) -> list[list[str]]:
    """Per vector, answers to `questions` (no system prompt) with it added at `layer` (None: no
    vector). One generation for all vectors, each row steered by its own. Vectors of one noise
    stream (`streams`, default all one) share each question's sampling noise (`PerRow`), so
    their answers differ by the vector; other streams draw their own."""
    import torch

    from traitscope.generation.generate import PerRow, generate
    from traitscope.model.hooks import add_to_rows

    encoded = [chat.encode(tokenizer, chat.messages_for(q)).ids for q in questions]
    streams = streams if streams is not None else [0] * len(vectors)
    n = len(questions)
    size = model.config.hidden_size
    rows = [np.zeros(size) if v is None else np.asarray(v, float) for v in vectors for _ in questions]
    with add_to_rows(model, layer, torch.tensor(np.stack(rows), dtype=torch.float32)) as steering:
        out = generate(
            model,
            tokenizer,
            encoded * len(vectors),
            s.max_new_tokens,
            s.max_tokens,
            s.temperature,
            s.seed,
            progress=False,
            per_row=PerRow(steering, [k * n + q for k in streams for q in range(n)]),
        )
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in out]
    return [texts[k * n : (k + 1) * n] for k in range(len(vectors))]


def gated_scores(
    trait: list[float | None], coherence: list[float | None], floor: float | None
) -> list[float]:
    """Per answer: the trait score if the judge scored it and rated it coherent >= floor (any
    coherence with no floor), else 0."""
    return [
        t if (t is not None and (floor is None or (c is not None and c >= floor))) else 0.0
        for t, c in zip(trait, coherence)
    ]


def judge_answers(
    judge: Any, rubric: str, questions: list[str], answers: list[list[str]], coherence: bool = True
) -> tuple[list, list]:
    """Trait and coherence scores, one list per answer set (all sets judged in two calls);
    without `coherence` (no gate to apply), that call is skipped and its scores are None."""
    flat = [(q, a) for set_ in answers for q, a in zip(questions, set_)]
    trait = [j.score for j in judge.score([Item(rubric, q, a) for q, a in flat])]
    if coherence:
        coherence = [j.score for j in judge.score([Item(judge.settings.coherence, q, a) for q, a in flat])]
    else:
        coherence = [None] * len(flat)
    n = len(questions)
    return (
        [trait[i * n : (i + 1) * n] for i in range(len(answers))],
        [coherence[i * n : (i + 1) * n] for i in range(len(answers))],
    )


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def _load_trait_vector(vectors: str | Path, evaluation: str | Path, name: str) -> Any:
    from traitscope.vectors.trait_vector import TraitVector

    return TraitVector.load(vectors, evaluation, name)
