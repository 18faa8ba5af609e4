"""WikiText-2 as token ids, from the Hugging Face hub or from a local directory.

A local directory is laid out like ``../shared/data``::

    wikitext-2-raw/test.txt    the raw test split, joined with "\\n\\n" (reported numbers)
    wikitext-2-raw/valid.txt   the raw validation split (used when present), else
    wikitext-2/valid.txt       the tokenized-release validation split (calibration and fitness)

The data setting is ``--data`` / the ``data`` parameter: ``wikitext2`` for the hub, or a directory;
``python-docs`` is a second held-out text (standard-library docstrings) for generalization checks.
Its default is ``$EVOPRUNE_DATA_DIR`` when set, else the hub.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from evoprune import EvopruneError, write_atomically
from evoprune.models import CACHE_DIR, hub_reachable, tokenizer_fingerprint
from evoprune.records import ROOT

HUB = "wikitext2"
PYTHON_DOCS = "python-docs"  # a second, offline text for generalization checks (test split only)
DOC_MODULES = ("argparse", "collections", "json", "csv", "datetime", "decimal", "email", "fractions", "functools",
               "heapq", "http.client", "inspect", "itertools", "logging", "os", "pathlib", "pickle", "random", "re",
               "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap",
               "threading", "typing", "unittest", "urllib.request", "zipfile", "asyncio", "dataclasses", "enum",
               "contextlib", "abc", "io", "time", "calendar")
DATA_ENV = "EVOPRUNE_DATA_DIR"
SPLITS = ("test", "validation")
LOCAL_FILES = {"test": ("wikitext-2-raw/test.txt",),
               "validation": ("wikitext-2-raw/valid.txt", "wikitext-2/valid.txt")}


@dataclass
class Tokens:
    ids: torch.Tensor  # 1-D int64
    source: str        # "hub:wikitext-2-raw-v1" or the file path
    split: str
    text_sha256: str

    def provenance(self) -> dict:
        return {"source": self.source, "split": self.split, "text_sha256": self.text_sha256,
                "n_tokens": int(self.ids.numel())}


def default_data() -> str:
    return os.environ.get(DATA_ENV) or HUB


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise EvopruneError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}.")


def local_file(data_dir: str | Path, split: str) -> Path:
    _check_split(split)
    root = Path(data_dir)
    if not root.is_dir():
        raise EvopruneError(f"data directory {root} does not exist. Point --data (or ${DATA_ENV}) at a copy laid "
                            f"out like ../shared/data, or use --data {HUB} on a machine with a network.")
    for rel in LOCAL_FILES[split]:
        if (root / rel).is_file():
            return root / rel
    raise EvopruneError(f"{root} has no {split} split: expected one of {', '.join(LOCAL_FILES[split])}.")


def _hub_text(split: str) -> str:
    if not hub_reachable():
        raise EvopruneError(f"the dataset hub is unreachable, so --data {HUB} cannot load WikiText-2. Set --data "
                            f"(or ${DATA_ENV}) to a local copy such as ../shared/data.")
    from datasets import load_dataset
    rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    return "\n\n".join(rows)  # exactly as the Hugging Face perplexity guide joins the rows


def python_docs_text() -> str:
    """English technical prose that the fitness never sees: the docstrings (over 200 characters) of 40 standard
    library modules and their public classes and functions. Fixed for a given Python version."""
    parts = []
    with warnings.catch_warnings():  # looking at typing.io and typing.re warns
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in DOC_MODULES:
            module = importlib.import_module(name)
            members = [v for k, v in sorted(vars(module).items()) if not k.startswith("_")
                       and (inspect.isclass(v) or inspect.isfunction(v)) and getattr(v, "__module__", "") == name]
            parts += [doc for doc in map(inspect.getdoc, [module, *members]) if doc and len(doc) > 200]
    return "\n\n".join(parts)


def read_text(data: str, split: str) -> tuple[str, str]:
    """Return (text, source description) for a split."""
    _check_split(split)
    if data == PYTHON_DOCS:
        if split != "test":
            raise EvopruneError(f"{PYTHON_DOCS} is a held-out text: it has only a test split.")
        return python_docs_text(), f"{PYTHON_DOCS}:python-{platform.python_version()}"
    if data == HUB:
        return _hub_text(split), "hub:wikitext-2-raw-v1"
    path = local_file(data, split)
    return path.read_text(encoding="utf-8"), str(path.resolve())


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a whole text, cached under data/cache/tokens by tokenizer and text hash."""
    text_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache = CACHE_DIR / "tokens" / f"{tokenizer_fingerprint(tokenizer)}-{text_hash}.pt"
    if cache.exists():
        return torch.load(cache)
    ids = torch.as_tensor(tokenizer(text, return_tensors="pt")["input_ids"][0], dtype=torch.long)
    write_atomically(cache, lambda tmp: torch.save(ids, tmp))
    return ids


def load_tokens(tokenizer, data: str | None = None, split: str = "test") -> Tokens:
    data = data or default_data()
    text, source = read_text(data, split)
    return Tokens(tokenize(tokenizer, text), source, split, hashlib.sha256(text.encode()).hexdigest())


def resolve_data(data: str | None) -> str:
    """A data setting as the loaders take it: None means the default, a relative directory is relative to the
    repository root (profiles say ``../shared/data``), and ``wikitext2`` means the hub."""
    if data is None:
        return default_data()
    if data in (HUB, PYTHON_DOCS) or Path(data).is_absolute():
        return data
    return os.path.normpath(ROOT / data)  # not resolve(): a symlinked data directory keeps the name it was given


def portable_data(data: str) -> str:
    """A data directory as a path relative to the repository root (how profiles name it), so a search's config,
    and with it the committed results, mean the same search in a clone elsewhere with the data beside it."""
    return data if data in (HUB, PYTHON_DOCS) else os.path.relpath(os.path.abspath(data), ROOT)
