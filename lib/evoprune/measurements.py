"""The measurement log: perplexities measured during a profile's run, reused instead of measured again while the
code that decides them is unchanged."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

# the modules whose code, with the weights, data and settings in a measurement's key (the dtype already resolved),
# decides the number
MEASURING_CODE = ("models.py", "data.py", "criteria.py", "pruning.py", "perplexity.py", "prefix.py", "session.py",
                  "sparsegpt.py", "levels.py", "grid.py")


def measuring_code() -> str:
    """A hash of the code that decides a measured perplexity and of the torch and transformers it runs on: a
    logged measurement is reused until that code changes, whatever else is committed meanwhile."""
    digest = hashlib.sha256()
    for name in MEASURING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    for name in ("torch", "transformers"):
        digest.update(f"{name}=={metadata.version(name)}".encode())
    return digest.hexdigest()[:16]


class MeasurementLog:
    """Perplexities measured during a profile's run, one JSON line each (``ReportPaths.measurements``), keyed by
    everything that decides them (``session.Session.measure`` builds the key, ``measuring_code`` is added). A
    notebook that needs a number an earlier one measured, or a rerun after a kill, reads it back instead of
    recomputing it. ``MeasurementLog(None)`` remembers nothing."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.known: dict[str, dict] = {}
        self.reused = 0  # measurements read back instead of made
        self.code = measuring_code()
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: measured again
                    continue
                self.known[entry["key"]] = entry["value"]

    def key(self, **fields) -> str:
        return json.dumps({**fields, "code": self.code}, sort_keys=True)

    def get(self, key: str) -> dict | None:
        value = self.known.get(key)
        self.reused += value is not None
        return value

    def put(self, key: str, value: dict) -> dict:
        self.known[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")
        return value


