"""Trait datasets, of two kinds, each named `<group>/<trait>` in `resources/traits/<group>/<trait>.yaml`.

- persona (the default): contrastive instruction pairs plus extraction and held-out questions;
  the model answers each question under an eliciting and a suppressing system prompt.
- prompt_contrast (`kind: prompt_contrast`): two labelled prompt sets (say harmful vs harmless
  requests) read like `prompt_sets:` entries, length-matched, captured without generation at
  one pool (`last_prompt`, `prompt_mean`, or `post_instruction_mean`: the template tokens
  between the user's text and the answer), as in Arditi et al.'s refusal direction. Optional
  `pairs` adds the extraction split of a paired prompt file (the hard negatives: harmful and
  harmless requests sharing a key word) to both sides, so the contrast is not one of vocabulary.

Both become one trait prompt set (split, label, question, pair_index) and from there the same
vectors, evaluation and record. Validation happens here, once, so later stages trust the fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from traitscope.data.prompts import normalise, user_texts
from traitscope.data.registry import bundled_path, is_bundled, missing_source
from traitscope.data.settings import TraitPromptSettings
from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml, write_parquet

MIN_PAIRS = 1
SIDES = ("positive", "negative")
REQUIRED = ("description", "pairs", "extraction_questions", "evaluation_questions", "judge_rubric")
CONTRAST_KIND = "prompt_contrast"
CONTRAST_REQUIRED = ("description", "positive", "negative", "n_extraction", "n_evaluation", "pool")
CONTRAST_POOLS = ("last_prompt", "prompt_mean", "post_instruction_mean")
CONTRAST_DATASETS = ("harmbench", "advbench", "refusal_direction", "parquet")
PAIR_DATASETS = ("hard_negatives",)


@dataclass(frozen=True)
class InstructionPair:
    """System prompts that elicit (`positive`) and suppress (`negative`) the trait."""

    positive: str
    negative: str


@dataclass(frozen=True)
class Trait:
    """One trait's contrastive data, as read from its YAML file."""

    name: str  # "<group>/<trait>"
    description: str
    pairs: tuple[InstructionPair, ...]
    extraction_questions: tuple[str, ...]
    evaluation_questions: tuple[str, ...]
    judge_rubric: str
    sha256: str  # hash of the file, recorded with the vectors for provenance


@dataclass(frozen=True)
class ContrastTrait:
    """A trait defined by two labelled prompt sets, e.g. harmful vs harmless requests."""

    name: str
    description: str
    positive: dict  # a prompt_sets:-style source {dataset, file} of the trait-positive prompts
    negative: dict
    n_extraction: int  # per side
    n_evaluation: int  # per side
    pool: str  # the pooled position the vectors are built and evaluated at
    match_length: bool  # negatives drawn to match the positives' lengths, split by split
    seed: int
    sha256: str
    pairs: dict | None = None  # a paired source {dataset, file} whose extraction split joins both sides


def trait_path(traits_dir: str | Path, name: str) -> Path:
    """Path of a trait's YAML; an unknown trait is an error listing the known ones."""
    if name.count("/") != 1:
        raise TraitscopeError(f"trait {name!r}: name traits as '<group>/<trait>', e.g. 'safety/evil'")
    path = Path(traits_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(
            str(p.relative_to(traits_dir).with_suffix("")) for p in Path(traits_dir).glob("*/*.yaml")
        )
        raise TraitscopeError(
            f"unknown trait {name!r}: {path} does not exist; known traits: {', '.join(known) or 'none'}"
        )
    return path


def _strings(path: Path, data: dict, key: str, minimum: int) -> tuple[str, ...]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
        raise TraitscopeError(f"{path}: '{key}' must be a list of non-empty strings")
    if len(items) < minimum:
        raise TraitscopeError(f"{path}: '{key}' needs at least {minimum} entries, found {len(items)}")
    return tuple(s.strip() for s in items)


def _read(path: Path) -> tuple[bytes, dict]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: trait file not found") from None
    except OSError as exc:  # a folder, a file without read permission
        raise TraitscopeError(
            f"{path}: cannot read the trait file ({exc.strerror}); name a trait YAML"
        ) from None
    data = parse_yaml(raw, path)
    if not isinstance(data, dict):
        raise TraitscopeError(f"{path}: expected a mapping with keys {', '.join(REQUIRED)}")
    if data.get("kind", "persona") not in ("persona", CONTRAST_KIND):
        raise TraitscopeError(f"{path}: kind must be persona or {CONTRAST_KIND}, got {data['kind']!r}")
    return raw, data


def read_trait(path: str | Path, name: str | None = None) -> Trait | ContrastTrait:
    """A trait of either kind, validated."""
    path = Path(path)
    raw, data = _read(path)
    if data.get("kind") == CONTRAST_KIND:
        return _contrast_trait(path, raw, data, name or f"{path.parent.name}/{path.stem}")
    return load_trait(path, name)


def contrast_pool(path: str | Path) -> str | None:
    """The pool a prompt-contrast trait is captured at; None for a persona trait (its answers)."""
    trait = read_trait(path)
    return trait.pool if isinstance(trait, ContrastTrait) else None


def _source(path: Path, data: dict, key: str) -> dict:
    spec = data[key]
    if not (isinstance(spec, dict) and spec.get("dataset") in CONTRAST_DATASETS):
        raise TraitscopeError(
            f"{path}: '{key}' must be a prompt source {{dataset, file}} with dataset one of "
            f"{', '.join(CONTRAST_DATASETS)}"
        )
    missing = missing_source(spec, labelled=True)  # the trait labels its two sides
    if missing:
        raise TraitscopeError(f"{path}: '{key}': {missing}")
    return spec


def _pairs(path: Path, data: dict) -> dict | None:
    spec = data.get("pairs")
    if spec is None:
        return None
    if not (
        isinstance(spec, dict) and spec.get("dataset") in PAIR_DATASETS and set(spec) == {"dataset", "file"}
    ):
        raise TraitscopeError(
            f"{path}: 'pairs' must be a paired source {{dataset, file}} with dataset one of "
            f"{', '.join(PAIR_DATASETS)}; its extraction split is used, never its held-out one"
        )
    return spec


def bundled_sources(path: str | Path) -> list[str]:
    """The project's own prompt files a trait reads (`pairs`): inputs of its prompt set."""
    trait = read_trait(path)
    specs = [trait.positive, trait.negative, trait.pairs] if isinstance(trait, ContrastTrait) else []
    return [str(bundled_path(s["dataset"], s["file"])) for s in specs if s and is_bundled(s["dataset"])]


def _known_keys(path: Path, data: dict, known: tuple[str, ...]) -> None:
    """A misspelt optional key (`seeds:`) would otherwise fall back to its default unnoticed."""
    unknown = sorted(set(data) - {*known, "kind"})
    if unknown:
        raise TraitscopeError(f"{path}: unknown key(s) {', '.join(unknown)}; known: kind, {', '.join(known)}")


def _contrast_trait(path: Path, raw: bytes, data: dict, name: str) -> ContrastTrait:
    missing = [k for k in CONTRAST_REQUIRED if k not in data]
    if missing:
        raise TraitscopeError(f"{path}: missing key(s) {', '.join(missing)} of a {CONTRAST_KIND} trait")
    _known_keys(path, data, (*CONTRAST_REQUIRED, "match_length", "seed", "pairs"))
    counts = {k: data[k] for k in ("n_extraction", "n_evaluation")}
    if not all(isinstance(v, int) and v >= 4 for v in counts.values()):
        raise TraitscopeError(f"{path}: n_extraction and n_evaluation must be integers >= 4, got {counts}")
    if data["pool"] not in CONTRAST_POOLS:
        raise TraitscopeError(
            f"{path}: pool must be one of {', '.join(CONTRAST_POOLS)}, got {data['pool']!r}"
        )
    match_length, seed = data.get("match_length", True), data.get("seed", 0)
    if not isinstance(match_length, bool) or isinstance(seed, bool) or not isinstance(seed, int):
        raise TraitscopeError(
            f"{path}: match_length must be true or false and seed an integer, "
            f"got {match_length!r} and {seed!r}"
        )
    return ContrastTrait(
        name=name,
        description=str(data["description"]).strip(),
        positive=_source(path, data, "positive"),
        negative=_source(path, data, "negative"),
        n_extraction=data["n_extraction"],
        n_evaluation=data["n_evaluation"],
        pool=data["pool"],
        match_length=match_length,
        seed=seed,
        sha256=hashlib.sha256(raw).hexdigest(),
        pairs=_pairs(path, data),
    )


def load_trait(path: str | Path, name: str | None = None) -> Trait:
    """Read and validate one persona trait file; every problem names the file and the fix.

    Stages that need answers or a rubric (steering, judge, CMA-ES) read traits here, so a
    prompt-contrast trait given to them is a clear error.
    """
    path = Path(path)
    if name is None:
        name = f"{path.parent.name}/{path.stem}"
    raw, data = _read(path)
    if data.get("kind") == CONTRAST_KIND:
        raise TraitscopeError(
            f"{path}: {name} is a {CONTRAST_KIND} trait (two prompt sets, no questions, answers or "
            "rubric); use a persona trait here"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise TraitscopeError(f"{path}: missing key(s) {', '.join(missing)}")
    _known_keys(path, data, REQUIRED)
    pairs_raw = data["pairs"]
    if not isinstance(pairs_raw, list) or len(pairs_raw) < MIN_PAIRS:
        raise TraitscopeError(f"{path}: 'pairs' must be a non-empty list of {{positive, negative}}")
    pairs = []
    for i, p in enumerate(pairs_raw):
        # an empty instruction would run that side with no system prompt at all
        if not (isinstance(p, dict) and all(isinstance(p.get(k), str) and p[k].strip() for k in SIDES)):
            raise TraitscopeError(
                f"{path}: pairs[{i}] needs non-empty string 'positive' and 'negative' entries"
            )
        if normalise(p["positive"]) == normalise(p["negative"]):  # a contrast of nothing
            raise TraitscopeError(f"{path}: pairs[{i}] has the same positive and negative instruction")
        pairs.append(InstructionPair(p["positive"].strip(), p["negative"].strip()))
    extraction = _strings(path, data, "extraction_questions", 1)
    evaluation = _strings(path, data, "evaluation_questions", 1)
    # compared as normalise() keys: a question differing only in case or spacing is the same
    # question, so held out in name only, or counted twice in a split's n
    for key, questions in (("extraction_questions", extraction), ("evaluation_questions", evaluation)):
        seen: set[str] = set()
        for q in questions:
            if normalise(q) in seen:
                raise TraitscopeError(f"{path}: {key} repeats {q!r} (case and spacing aside); drop one")
            seen.add(normalise(q))
    trained = {normalise(q) for q in extraction}
    overlap = [q for q in evaluation if normalise(q) in trained]
    if overlap:
        raise TraitscopeError(
            f"{path}: {len(overlap)} question(s) appear in both extraction and evaluation sets "
            f"(case and spacing aside), e.g. {overlap[0]!r}; held-out questions must be disjoint"
        )
    if not isinstance(data["description"], str) or not isinstance(data["judge_rubric"], str):
        raise TraitscopeError(f"{path}: 'description' and 'judge_rubric' must be strings")
    if "{answer}" not in data["judge_rubric"]:  # the judge would score the rubric, not the answer
        raise TraitscopeError(f"{path}: judge_rubric needs an {{answer}} placeholder (and {{question}})")
    return Trait(
        name=name,
        description=data["description"].strip(),
        pairs=tuple(pairs),
        extraction_questions=extraction,
        evaluation_questions=evaluation,
        judge_rubric=data["judge_rubric"].strip(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def trait_prompts(
    trait_file: str | Path,
    out: str | Path,
    settings: TraitPromptSettings,
    trait_name: str | None = None,
    data_mirror: str | None = None,
    cache_dir: str | Path = "results/cache",
) -> pd.DataFrame:
    """The trait's contrastive prompt set: each question under eliciting and suppressing prompts.

    One row per (split, question, pair, polarity). Pairs rotate across questions so every
    instruction pair is used even when each question gets only a few. The set is captured
    (with generation) like any other prompt set.
    A prompt-contrast trait reads its two prompt sources instead (`data_mirror`, `cache_dir`).
    """
    path = Path(trait_file)
    if trait_name is not None and trait_name != f"{path.parent.name}/{path.stem}":
        # the set's rows would carry the name, and every later stage would read them as that trait's
        raise TraitscopeError(
            f"--trait {trait_name} is not the trait of {trait_file} ({path.parent.name}/{path.stem}); "
            "a trait's file is <traits_dir>/<group>/<name>.yaml"
        )
    any_trait = read_trait(trait_file, trait_name)
    if isinstance(any_trait, ContrastTrait):
        table = contrast_prompts(any_trait, data_mirror, cache_dir)
        write_parquet(out, table)
        return table
    trait = any_trait
    rows = []
    n_pairs = len(trait.pairs)
    per_q = min(settings.pairs_per_question, n_pairs)
    for split, questions, limit in (
        ("extraction", trait.extraction_questions, settings.n_extraction),
        ("evaluation", trait.evaluation_questions, settings.n_evaluation),
    ):
        for qi, question in enumerate(questions[:limit]):
            for k in range(per_q):
                pi = (qi + k) % n_pairs
                for label, system in ((1, trait.pairs[pi].positive), (0, trait.pairs[pi].negative)):
                    rows.append(
                        {
                            "prompt_id": f"{trait.name}:{split}:q{qi}:p{pi}:{'pos' if label else 'neg'}",
                            "messages": json.dumps(
                                [{"role": "system", "content": system}, {"role": "user", "content": question}]
                            ),
                            "trait": trait.name,
                            "split": split,
                            "label": label,
                            "pair_index": pi,
                            "question": question,
                            "trait_sha256": trait.sha256,
                        }
                    )
    table = pd.DataFrame(rows)
    write_parquet(out, table)
    return table


def contrast_prompts(trait: ContrastTrait, data_mirror: str | None, cache_dir: str | Path) -> pd.DataFrame:
    """A prompt-contrast trait's prompt set: seeded positives, negatives length-matched per split.

    Texts are deduplicated and no negative repeats a positive, so no row is both trained on and
    held out. Rows carry `question` (the prompt) and `pair_index` 0, the columns the persona
    trait sets have, so vectors and evaluation read both kinds alike. With `pairs`, the paired
    file's extraction split joins both sides, whole pairs divided between the trait's splits in
    the ratio n_extraction : n_evaluation (seeded).
    """
    from traitscope.data.prep import length_matched, load_source, without

    total = trait.n_extraction + trait.n_evaluation
    # each side's label is the trait's (1 positive, 0 negative), whatever its files are named
    positives = load_source({**trait.positive, "label": 1}, data_mirror, cache_dir)
    positives = without(positives, positives.iloc[:0])
    if len(positives) < total:
        raise TraitscopeError(
            f"{trait.name}: {len(positives)} distinct positive prompts, {total} needed; "
            "lower n_extraction or n_evaluation"
        )
    positives = positives.sample(n=total, random_state=trait.seed)
    pool = without(load_source({**trait.negative, "label": 0}, data_mirror, cache_dir), positives)
    cut = trait.n_extraction
    splits = {"extraction": positives.iloc[:cut], "evaluation": positives.iloc[cut:]}
    paired = _paired_splits(trait, data_mirror, cache_dir) if trait.pairs is not None else {}
    rows = []
    for split, pos in splits.items():
        texts = user_texts(pos)
        if trait.match_length:
            neg = length_matched(pool, [len(t) for t in texts], trait.seed, trait.name)
        else:
            neg = pool.sample(n=len(pos), random_state=trait.seed)
        pool = pool.drop(neg.index)
        if trait.pairs is not None:
            pos, neg = pd.concat([pos, paired[split][0]]), pd.concat([neg, paired[split][1]])
        for label, group in ((1, pos), (0, neg)):
            for i, (source_id, text) in enumerate(zip(group["prompt_id"], user_texts(group))):
                rows.append(
                    {
                        "prompt_id": f"{trait.name}:{split}:{i}:{'pos' if label else 'neg'}",
                        "prompt": text,
                        "source_id": source_id,
                        "trait": trait.name,
                        "split": split,
                        "label": label,
                        "pair_index": 0,
                        "question": text,
                        "trait_sha256": trait.sha256,
                    }
                )
    return pd.DataFrame(rows)


def _paired_splits(
    trait: ContrastTrait, data_mirror: str | None, cache_dir: str | Path
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{trait split: (harmful side, harmless side)} of the paired file's extraction split, whole
    pairs shuffled (seeded) and cut in the ratio n_extraction : n_evaluation."""
    from traitscope.data.prep import load_source

    rows = load_source({**trait.pairs, "split": "extraction"}, data_mirror, cache_dir)
    pair_ids = rows["meta"].map(lambda m: json.loads(m)["pair_id"])
    order = pd.Series(sorted(set(pair_ids))).sample(frac=1.0, random_state=trait.seed).tolist()
    cut = round(len(order) * trait.n_extraction / (trait.n_extraction + trait.n_evaluation))
    out = {}
    for split, chosen in (("extraction", set(order[:cut])), ("evaluation", set(order[cut:]))):
        side = rows[pair_ids.isin(chosen)]
        out[split] = (side[side["label"] == 1], side[side["label"] == 0])
    return out
