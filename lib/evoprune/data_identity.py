"""A search's local data is identified by its content, not only by its path: the same search over the same files
under another path (a moved data folder, a copy on another machine) resumes from its checkpoint or reads back its
result, and a different text under any path is refused, naming the file.

A search's directory keeps ``data.json``: the data setting the search was named with and, per split it reads, the
file and the SHA-256 of its text (as ``Tokens.text_sha256``). A finished search written before this file existed
is identified by its ``result.json`` provenance, which holds the same hashes. The hub and ``python-docs`` are
identified by their names, as before.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from evoprune import EvopruneError
from evoprune.data import HUB, PYTHON_DOCS, local_file
from evoprune.records import read_json, write_json
from evoprune.objective import FitnessSpec
from evoprune.search import saved_search

RECORD = "data.json"


def text_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()


def splits_read(spec: FitnessSpec) -> list[str]:
    return sorted({spec.fitness_split, "test"})


def fingerprint(data: str, splits: list[str]) -> dict[str, dict] | None:
    """Per split: the file read and the SHA-256 of its text; None for data named, not given by path."""
    if data in (HUB, PYTHON_DOCS):
        return None
    files = {split: local_file(data, split) for split in splits}
    return {split: {"file": str(path), "text_sha256": text_sha256(path)} for split, path in files.items()}


def saved_identity(out: Path) -> tuple[dict, dict | None] | None:
    """(saved config, its data fingerprint or None if unrecorded) of the search in ``out``; None if there is none.
    A record left by a run that saved nothing else describes no search and is removed."""
    found = saved_search(out)
    if found is None:
        (out / RECORD).unlink(missing_ok=True)
        return None
    saved = found[1]
    config = saved.get("config", {})
    if (out / RECORD).is_file():
        return config, read_json(out / RECORD)["splits"]
    data = saved.get("provenance", {}).get("data", {})
    if {"fitness", "test"} <= set(data):  # result.json's provenance: the fitness split's text and the test text
        split_of = {"fitness": config.get("fitness_split"), "test": "test"}
        return config, {split_of[role]: {"file": data[role]["source"], "text_sha256": data[role]["text_sha256"]}
                        for role in ("fitness", "test")}
    return config, None


def differences(saved: dict, current: dict) -> list[str]:
    return [f"{current[s]['file']} is not the text of {saved[s]['file']} (SHA-256 {saved[s]['text_sha256'][:12]}…)"
            for s in sorted(current) if s in saved and saved[s]["text_sha256"] != current[s]["text_sha256"]]


def same_text_elsewhere(out: str | Path, spec: FitnessSpec, data: str) -> FitnessSpec:
    """``spec`` under the data name of the search in ``out`` when that search read the same text that ``data``
    (a directory) holds now, so its config matches and it resumes; an error naming the files when the text
    differs. Otherwise ``spec`` as given (a new search, or one whose data is named, not given by path)."""
    out = Path(out)
    saved = saved_identity(out) if out.is_dir() else None
    current = fingerprint(data, splits_read(spec))
    if saved is None or current is None or saved[1] is None:
        return spec
    config, recorded = saved
    changed = differences(recorded, current)
    if changed:
        raise EvopruneError(f"--out {out} holds a search on another text: {'; '.join(changed)}. Point --data at "
                            f"the search's data, or give a new --out.")
    if config.get("data") in (None, spec.data) or set(recorded) != set(current):
        return spec
    return replace(spec, data=config["data"])


def record(out: str | Path, spec: FitnessSpec, data: str) -> None:
    """Write ``data.json`` for a search about to run in ``out`` (kept when it already names this text)."""
    current = fingerprint(data, splits_read(spec))
    if current is not None and not (Path(out) / RECORD).is_file():
        write_json(Path(out) / RECORD, {"data": spec.data, "splits": current})
