"""What the judge is configured with and what it hands around: its settings, a judgement, the
per-run counters and a backend's raw answer.

Plain records in their own module, so the backends, the cache and the judge share them
without importing one another.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from traitscope.errors import TraitscopeError
from traitscope.judge.rubrics import COHERENCE_RUBRIC

BACKENDS = ("local", "openai", "classifier")


@dataclass(frozen=True)
class JudgeSettings:
    """The config's `judge:` section (every default lives in the schema)."""

    backend: str  # "local", "openai" or "classifier" (trait rubrics; the rest to classifier.fallback)
    min_number_mass: float
    cache: str | None  # SQLite file; None: no cache
    coherence_rubric: str | None  # None: COHERENCE_RUBRIC
    local: dict = field(default_factory=dict)  # {variant, manifest, prefill, max_tokens, device}
    openai: dict = field(default_factory=dict)  # {base_url, model, api_key_env, max_concurrency, ...}
    classifier: dict = field(
        default_factory=dict
    )  # {features, training, traits_dir, references, reader_manifest, fallback}

    @classmethod
    def from_dict(cls, data: dict, where: str = "judge") -> JudgeSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TraitscopeError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        absent = [name for name in required if name not in data]
        if absent:  # rules pass the schema-filled section; a hand-written one may not
            raise TraitscopeError(
                f"{where}: missing key(s) {', '.join(absent)}; pass the config's whole judge: section"
            )
        if data.get("backend") not in BACKENDS:
            raise TraitscopeError(
                f"{where}.backend must be one of {', '.join(BACKENDS)}, got {data.get('backend')!r}"
            )
        fallback = (data.get("classifier") or {}).get("fallback", "local")
        if data["backend"] == "classifier" and fallback not in ("local", "openai", None):
            raise TraitscopeError(
                f"{where}.classifier.fallback must be local, openai or null, got {fallback!r}"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def coherence(self) -> str:
        return self.coherence_rubric or COHERENCE_RUBRIC

    @property
    def llm_backend(self) -> str | None:
        """The LLM backend that scores rubrics: the backend itself, or the classifier's fallback
        for the rubrics it cannot read (None: none, those are an error)."""
        if self.backend != "classifier":
            return self.backend
        return self.classifier.get("fallback", "local")

    def public(self) -> dict:
        """The settings as results record them (the key's variable name, never a key)."""
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    score: float | None  # None: no score (too little mass on numbers, unparsable or failed)
    mass: float  # probability on integers 0-100 (1.0 for a parsed reply, 0 when failed)
    source: str  # logprobs, digits, parsed, none, failed
    cached: bool


@dataclass
class JudgeStats:
    """Per-run counters: what was asked, what the cache answered, what it cost."""

    judgements: int = 0  # judgements asked for
    cache_hits: int = 0  # answered with no backend call: from the cache, or repeated in one call
    computed: int = 0  # judgements the backend was asked for (cache misses)
    requests: int = 0  # HTTP requests (retries included) or local forward passes
    retries: int = 0
    no_score: int = 0
    failed: int = 0  # retries exhausted or a malformed reply: not cached
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Raw:
    """What a backend returns per prompt: integer probabilities, or None when it failed."""

    probs: dict[int, float] | None
    source: str  # logprobs, digits, parsed, none, failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
