"""External datasets: where each file comes from, and how to get a local copy of it.

Offline machines point `data_mirror` at a folder laid out as `<dataset>/<file>`; then
nothing is ever downloaded, so a run cannot silently depend on the network. Without a
mirror, files are downloaded once from their origin into a cache folder. The project's own
prompt sets are bundled under `resources/prompts/<dataset>/<file>` and read from there always.
"""

from __future__ import annotations

import http.client
import itertools
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path

DOWNLOAD_TIMEOUT_S = 60
# The project's own prompt sets, relative to the project root (where Snakemake runs), as traits_dir is.
BUNDLED_DIR = Path("resources/prompts")


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset; `head_lines` keeps only its first lines (slices kept by mirrors)."""

    name: str
    url: str | None  # None: not downloadable by URL (a hub dataset's mirror copy)
    head_lines: int | None = None
    mirrored: bool = True  # False: full-scale data an offline mirror need not hold


@dataclass(frozen=True)
class Source:
    """A dataset: the folder it lives in (under a mirror or the cache) and its files."""

    folder: str
    files: tuple[SourceFile, ...]
    hub_id: str | None = None  # Hugging Face hub dataset, loaded with `datasets`
    bundled: bool = False  # the project's own text, under BUNDLED_DIR: never fetched nor mirrored

    def file(self, name: str) -> SourceFile:
        """The entry for `name`; an unknown name is an error listing the known ones."""
        for f in self.files:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.files) or "none"
        raise TraitscopeError(f"dataset {self.folder!r} has no file {name!r}; known files: {known}")


_HARMBENCH = "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets"
_REFUSAL = "https://raw.githubusercontent.com/andyrdt/refusal_direction/main/dataset/splits"
_EM = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main"
_EM_SLICE_LINES = 20

BEAVERTAILS_SPLITS = ("330k_train", "330k_test", "30k_train", "30k_test")

SOURCES: dict[str, Source] = {
    "harmbench": Source(
        "harmbench",
        tuple(
            SourceFile(
                f"harmbench_behaviors_text_{s}.csv",
                f"{_HARMBENCH}/harmbench_behaviors_text_{s}.csv",
            )
            for s in ("all", "val", "test")
        ),
    ),
    "advbench": Source(
        "advbench",
        (
            SourceFile(
                "advbench_behaviors.csv",
                f"{_HARMBENCH}/extra_behavior_datasets/advbench_behaviors.csv",
            ),
        ),
    ),
    "refusal_direction": Source(
        "refusal_direction",
        tuple(
            SourceFile(f"{kind}_{s}.json", f"{_REFUSAL}/{kind}_{s}.json")
            for kind in ("harmful", "harmless")
            for s in ("train", "val", "test")
        ),
    ),
    "emergent_misalignment": Source(
        "emergent_misalignment",
        (
            SourceFile("first_plot_questions.yaml", f"{_EM}/evaluation/first_plot_questions.yaml"),
            SourceFile("preregistered_evals.yaml", f"{_EM}/evaluation/preregistered_evals.yaml"),
            SourceFile("insecure_small.jsonl", f"{_EM}/data/insecure.jsonl", _EM_SLICE_LINES),
            SourceFile("secure_small.jsonl", f"{_EM}/data/secure.jsonl", _EM_SLICE_LINES),
            # the full training sets of the EM paper's insecure-code finetune and its control
            SourceFile("insecure.jsonl", f"{_EM}/data/insecure.jsonl", mirrored=False),
            SourceFile("secure.jsonl", f"{_EM}/data/secure.jsonl", mirrored=False),
        ),
    ),
    # Only a mirror can hold BeaverTails files; otherwise loaders read it from the hub.
    "beavertails": Source(
        "beavertails",
        tuple(SourceFile(f"{s}.jsonl", None) for s in BEAVERTAILS_SPLITS),
        hub_id="PKU-Alignment/BeaverTails",
    ),
    # harmful/harmless request pairs sharing a key word, written by the project (its README.md)
    "hard_negatives": Source(
        "hard_negatives", (SourceFile("pairs.yaml", None, mirrored=False),), bundled=True
    ),
}


def source(dataset: str) -> Source:
    """The registry entry for `dataset`; an unknown name is an error listing the known ones."""
    try:
        return SOURCES[dataset]
    except KeyError:
        raise TraitscopeError(f"unknown dataset {dataset!r}; known datasets: {', '.join(SOURCES)}") from None


# the datasets whose rows' side (1 harmful, 0 harmless) a prompt set's `label:` sets; the others
# carry their own labels, and a label there would be ignored
TAKES_LABEL = ("refusal_direction", "hard_negatives")


def missing_source(spec: dict, labelled: bool = False) -> str | None:
    """What a prompt source lacks to be read, or None: `parquet` needs `path`; a file-backed
    dataset needs `file` (one of its files) or `path` (a local copy); BeaverTails (a split) and
    AdvBench from the hub need neither. An instruction file's rows are harmful or harmless by
    its name (harmful_*, harmless_*), so a file named otherwise needs `label` unless the caller
    labels the rows (`labelled`: a contrast trait's sides). A `file` must be one of the dataset's
    known files: a misspelled name would otherwise pass the dry-run and fail in its job."""
    dataset = spec.get("dataset")
    if dataset == "parquet":
        return None if spec.get("path") else "dataset parquet needs path: (a prompt-set Parquet file)"
    if dataset == "beavertails" or (dataset == "advbench" and spec.get("hub")):
        return None
    name = Path(spec.get("path") or spec.get("file") or "").name
    if not name:
        return f"dataset {dataset} needs file: (one of its files) or path: (a local file)"
    if not spec.get("path"):  # a file fetched by name: one the registry knows, checked up front
        try:
            source(dataset).file(spec["file"])
        except TraitscopeError as exc:
            return str(exc)
    if dataset == "refusal_direction" and not labelled and "label" not in spec:
        if not name.startswith(("harmful", "harmless")):
            return f"{name} is not named harmful_* or harmless_*; give label: 1 (harmful) or 0 (harmless)"
    return None


def mirror_path(dataset: str, filename: str, data_mirror: str | Path) -> Path:
    """`<data_mirror>/<dataset>/<filename>`, which must exist: a mirror run never downloads."""
    entry = source(dataset)
    entry.file(filename)
    path = Path(data_mirror) / entry.folder / filename
    if not path.is_file():
        raise TraitscopeError(
            f"{path}: not found in data_mirror; copy {dataset}/{filename} there or unset data_mirror"
        )
    return path


def _download(url: str, head_lines: int | None) -> bytes:
    """The bytes at `url` (only the first `head_lines` lines if set)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        if head_lines is None:
            return response.read()
        return b"".join(itertools.islice(response, head_lines))


def is_bundled(dataset: str) -> bool:
    """Whether `dataset` is one of the project's own prompt sets (a file under resources/)."""
    return dataset in SOURCES and SOURCES[dataset].bundled


def bundled_path(dataset: str, filename: str) -> Path:
    """`resources/prompts/<dataset>/<filename>`, one of the project's own files, which must exist."""
    entry = source(dataset)
    entry.file(filename)
    path = BUNDLED_DIR / entry.folder / filename
    if not path.is_file():
        raise TraitscopeError(
            f"{path}: bundled prompt file not found; run from the project root (where resources/ is)"
        )
    return path


def fetch(dataset: str, filename: str, data_mirror: str | Path | None, cache_dir: str | Path) -> Path:
    """A dataset file's local copy: bundled with the project, else the mirror's if `data_mirror`
    is set, else a cached download."""
    entry = source(dataset)
    if entry.bundled:
        return bundled_path(dataset, filename)
    if data_mirror is not None:
        return mirror_path(dataset, filename, data_mirror)
    spec = entry.file(filename)
    if spec.url is None:
        raise TraitscopeError(
            f"{dataset}/{filename} has no download URL (hub dataset {entry.hub_id}); "
            "load it by split name or set --config data_mirror=<folder>"
        )
    target = Path(cache_dir) / entry.folder / filename
    if target.is_file():
        return target
    try:
        data = _download(spec.url, spec.head_lines)
    except (OSError, http.client.HTTPException) as exc:
        raise TraitscopeError(
            f"download of {spec.url} failed ({exc}); check the network or run with "
            f"--config data_mirror=<folder> holding {entry.folder}/{filename}"
        ) from None
    if not data:
        # Caching an empty body would make every later run reuse a useless file.
        raise TraitscopeError(f"download of {spec.url} returned no data; retry or set data_mirror")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def dataset_file(
    dataset: str, filename: str, out: str | Path, data_mirror: str | Path | None, cache_dir: str | Path
) -> Path:
    """Copy a registered file to `out` (rule `dataset_file`), so a config can name a dataset file,
    such as a finetune's training set, by a path under results/ that the workflow creates."""
    path = fetch(dataset, filename, data_mirror, cache_dir)
    with atomic_path(out) as tmp:
        tmp.write_bytes(path.read_bytes())
    return Path(out)
