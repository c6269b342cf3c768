"""An LLM judge: how strongly does a response show a trait, on a 0-100 scale.

A rubric is a prompt with `{question}` and `{answer}` placeholders: a trait's own
`judge_rubric`, an experiment's own rubrics, or the built-in `COHERENCE_RUBRIC`. Scoring
follows the persona-vector and emergent-misalignment code: the judge produces one output
token with its top-20 logprobs, the score is the probability-weighted mean over the tokens
that read as an integer 0-100, and there is no score (None, never 0) when less than
`min_number_mass` (0.25) of the probability sits on numbers. A reply without logprobs is
parsed as a number, else no score.

Backends:
- `openai`: any OpenAI-compatible chat API through the `openai` package (OpenAI, vLLM, ...):
  `base_url`, `model`, the key read from the environment variable the config names. Requests
  run concurrently up to a limit, with retries and exponential backoff on rate limits (429),
  server errors and timeouts (the client's own retries are off, so every HTTP request is
  counted).
- `local`: a prepared model variant run here, the default, so the main job needs no network.
  The next-token distribution comes from one forward pass, no sampling. A tokenizer with a
  token for every integer 0-100 is scored exactly as the API is (top-20 of one token). A
  tokenizer that splits numbers into digits (SmolLM2, Llama-2, Mistral) cannot say "57" in
  one token, so the one pass scores the whole number: every digit string of 0-100 is laid
  out as a token tree after the prompt (attention mask: each node sees the prompt and its
  own ancestors), and P(n) = P(its digits in turn) x P(the token after them is not a digit).
  "5" then is 5 only when no digit follows, not also the start of 50. The local backend
  can start the assistant's turn with `prefill` ("Score: "): a 135M model puts 0.09-0.14 of
  its first-token mass on digits after the bare rubric and 0.99 after that lead-in.

Every judgement is cached on disk (SQLite) under a hash of (backend, model, rubric,
question, answer) and the scoring settings, so a rerun with nothing changed makes no judge
call. Failed requests (retries exhausted, malformed replies) are counted, never cached.
API keys are read from the environment when a client is made and are never written to
logs, results or the cache.

The package's face is building a Judge from the config's `judge:` JSON and the subcommands'
`--judge` / `--judge-model` options; it re-exports what other modules and the tests use, so
`from traitscope import judge` and `from traitscope.judge import X` work unchanged. The work is
in its modules: rubrics (the prompts), scoring_rule (the scoring rule), judgements (its settings,
a judgement, the counters), cache (SQLite), openai_backend, local_backend and number_tree (the local judge's
tokens of 0-100 and digit tree), scorer (the Judge) and stages (trait-judgements,
trait-agreement). classifier and embedding are judges that are not LLMs: classifiers (TF-IDF; a
reader model's pooled hidden states) fitted on labelled answers; written_judge makes them the
`classifier` backend, fitted on the project-written training set (truth_set reads it and the
truth set), for trait rubrics, with an LLM backend as fallback for the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.judgements import JudgeSettings, JudgeStats  # noqa: F401  (re-exported)
from traitscope.judge.number_tree import (  # noqa: F401  (re-exported)
    _digit_start_mask,
    number_tokens,
    tree_logits,
    tree_number_probs,
)
from traitscope.judge.rubrics import render  # noqa: F401  (re-exported)
from traitscope.judge.scorer import Item, Judge  # noqa: F401  (re-exported)
from traitscope.judge.scoring_rule import aggregate, number_probs_from_top, parse_reply  # noqa: F401  (re-exported)
from traitscope.judge.stages import trait_agreement, trait_judgements  # noqa: F401  (re-exported)


def judge_from_json(text: str, manifest: str | None = None) -> Judge:
    """A Judge from the rule's `--judge` JSON (and the local judge's prepared manifest)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraitscopeError(f"--judge: not JSON ({exc})") from None
    settings = JudgeSettings.from_dict(data)
    if settings.llm_backend == "local":
        if manifest is None:
            raise TraitscopeError(
                "judge.backend local (or classifier with fallback local) needs --judge-model "
                "(the judge variant's manifest.json)"
            )
        settings = JudgeSettings(**{**asdict(settings), "local": {**settings.local, "manifest": manifest}})
    return Judge(settings)


def add_judge_arguments(parser: Any) -> None:
    """`--judge` and `--judge-model`, the options every judging subcommand takes."""
    parser.add_argument("--judge", required=True, help="the config's judge: section as JSON")
    parser.add_argument("--judge-model", required=True, help="local judge: its manifest.json, else none")


def judge_from_args(args: Any) -> Judge:
    """A Judge from a subcommand's `--judge` JSON and `--judge-model` (a manifest, or none)."""
    model = args.judge_model
    return judge_from_json(args.judge, None if model in (None, "none") else str(model))
