"""Steering sanity check: adding a trait vector should push generated text toward it.

Text generated with and without steering is read back by the unsteered model, and its
response-mean activation is projected onto the trait vector: if the vector is causal,
steered text projects higher.
"""

from __future__ import annotations

from pathlib import Path

from traitscope.capture.engine import pooled_activations
from traitscope.data.traits import load_trait
from traitscope.io import write_json
from traitscope.model import chat
from traitscope.model import loading as models
from traitscope.model.generate import generate
from traitscope.model.hooks import add_to_layer
from traitscope.stats import cohens_d
from traitscope.vectors.record import TraitVector


def steering_check(
    model_manifest: str | Path,
    vectors_path: str | Path,
    evaluation: str | Path,
    trait_file: str | Path,
    out: str | Path,
    coefficient: float,
    max_new_tokens: int,
    max_tokens: int,
) -> dict:
    """Generate on held-out questions with and without steering; compare projections."""
    trait = load_trait(trait_file)
    vector = TraitVector.load(vectors_path, evaluation, trait.name)
    layer = vector.layer
    direction = vector.direction()
    steer = vector.steering_vector(coefficient)
    model, tokenizer = models.load(model_manifest)
    prompts = [chat.encode(tokenizer, chat.messages_for(q)).ids for q in trait.evaluation_questions]
    plain = generate(model, tokenizer, prompts, max_new_tokens, max_tokens, temperature=0.0, seed=0)
    with add_to_layer(model, layer, steer):
        steered = generate(model, tokenizer, prompts, max_new_tokens, max_tokens, temperature=0.0, seed=0)
    eos = [tokenizer.eos_token_id]
    scores = {}
    for name, outs in (("unsteered", plain), ("steered", steered)):
        enc = [
            chat.encode(tokenizer, chat.messages_for(q), response=o or eos)
            for q, o in zip(trait.evaluation_questions, outs)
        ]
        acts = pooled_activations(
            model, enc, [layer], ["response_mean"], max_tokens, tokenizer.pad_token_id, "right"
        )["response_mean"][:, 0]
        scores[name] = (acts.float() @ direction.float()).numpy()
    result = {
        "trait": trait.name,
        "layer": layer,
        "method": vector.method,
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
