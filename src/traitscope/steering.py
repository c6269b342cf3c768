"""Steering sanity check: adding a trait vector should push generated text toward it.

Text generated with and without steering is read back by the unsteered model, and its
response-mean activation is projected onto the trait vector: if the vector is causal,
steered text projects higher.
"""

from __future__ import annotations

import json
from pathlib import Path

from traitscope import chat, models
from traitscope.capture import pooled_activations
from traitscope.generate import generate
from traitscope.hooks import add_to_layer
from traitscope.io import write_json
from traitscope.stats import cohens_d
from traitscope.traits import load_trait
from traitscope.vectors import unit


def check(
    model_manifest: str | Path,
    vectors_path: str | Path,
    evaluation: str | Path,
    trait_file: str | Path,
    out: str | Path,
    coefficient: float = 4.0,
    max_new_tokens: int = 32,
    max_tokens: int = 8192,
) -> dict:
    """Generate on held-out questions with and without steering; compare projections."""
    from traitscope.extraction import load_vectors

    trait = load_trait(trait_file)
    chosen = json.loads(Path(evaluation).read_text())["chosen"]
    layer = chosen["layer"]
    vectors = load_vectors(vectors_path)
    direction = unit(vectors[chosen["method"]])[layer]
    # steer along the mean difference: its norm is the trait's natural scale at this layer
    steer = coefficient * vectors["mean_diff"][layer]
    model, tokenizer = models.load(model_manifest)
    prompts = [chat.encode(tokenizer, chat.messages_for(q)).ids for q in trait.evaluation_questions]
    plain = generate(model, tokenizer, prompts, max_new_tokens, max_tokens)
    with add_to_layer(model, layer, steer):
        steered = generate(model, tokenizer, prompts, max_new_tokens, max_tokens)
    eos = [tokenizer.eos_token_id]
    scores = {}
    for name, outs in (("unsteered", plain), ("steered", steered)):
        enc = [
            chat.encode(tokenizer, chat.messages_for(q), response=o or eos)
            for q, o in zip(trait.evaluation_questions, outs)
        ]
        acts = pooled_activations(
            model, enc, [layer], ["response_mean"], max_tokens, pad_id=tokenizer.pad_token_id
        )["response_mean"][:, 0]
        scores[name] = (acts.float() @ direction.float()).numpy()
    result = {
        "trait": trait.name,
        "layer": layer,
        "method": chosen["method"],
        "coefficient": coefficient,
        "steering_vector": "coefficient * mean_diff[layer]",
        "steering_norm": float(steer.norm()),
        "n": len(prompts),
        "mean_projection_unsteered": float(scores["unsteered"].mean()),
        "mean_projection_steered": float(scores["steered"].mean()),
        "difference": float(scores["steered"].mean() - scores["unsteered"].mean()),
        "cohens_d": cohens_d(scores["steered"], scores["unsteered"]),
        "steered_higher": bool(scores["steered"].mean() > scores["unsteered"].mean()),
        "examples": [
            {
                "question": q,
                "unsteered": tokenizer.decode(a, skip_special_tokens=True),
                "steered": tokenizer.decode(b, skip_special_tokens=True),
            }
            for q, a, b in list(zip(trait.evaluation_questions, plain, steered))[:3]
        ],
    }
    write_json(out, result)
    return result
