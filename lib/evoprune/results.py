"""Result files: provenance on every record, and writes that never leave a half-written file behind."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from evoprune import EvopruneError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "numpy", "evoprune")
STUDY_PUBLISHED = ROOT / "data" / "study_published.json"


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        # outputs a run rewrites (reports/, figures/) do not make the code that produced them dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports",
                                ":!figures"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def provenance(**fields) -> dict:
    """Where a number came from: the caller's fields (model, data, protocol, seed, dtype, ...) plus the code
    version, package versions, hardware and the time it was recorded."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {**fields, "git_commit": git_commit(), "packages": versions, "python": platform.python_version(),
            "hardware": hardware(), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class MeasurementLog:
    """Perplexities measured during a profile's run, one JSON line each (``ReportPaths.measurements``), keyed by
    everything that decides them: model weights, criterion, the exact number of weights removed from each matrix,
    text, protocol, windows, dtype and code commit. A notebook that needs a number an earlier one measured (dense in
    01 and 02, uniform at a search's target in 02 and 03) reads it back instead of spending minutes recomputing it.
    ``MeasurementLog(None)`` measures every time."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.known: dict[str, dict] = {}
        self.commit = git_commit()
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: measured again
                    continue
                self.known[entry["key"]] = entry["value"]

    def perplexity(self, pruner, weights: str, tokens, protocol: str, windows: int | None, dtype: str,
                   **options):
        """``perplexity.measure`` of the pruner's model as pruned now, or the logged value of the same measurement.
        ``options`` go to ``perplexity.measure`` (seq_len, stride, batch_size; the first two are in the key)."""
        from evoprune import perplexity
        key = json.dumps({"weights": weights, "criterion": pruner.criterion, "removed": pruner.removed,
                          "text": tokens.text_sha256, "split": tokens.split, "protocol": protocol,
                          "windows": windows, "dtype": dtype, "commit": self.commit,
                          "seq_len": options.get("seq_len", 1024), "stride": options.get("stride", 512)},
                         sort_keys=True)
        if key not in self.known:
            measured = perplexity.measure(pruner.model, tokens.ids, protocol, max_windows=windows,
                                          dtype=perplexity.get_dtype(dtype), **options)
            self.known[key] = measured.as_dict()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps({"key": key, "value": self.known[key]}) + "\n")
        return perplexity.Perplexity(**self.known[key])


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically: a reader sees the old file or the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def study_published() -> dict:
    """The published study's GPT-2 figures (its own protocol, scored on the windows it optimized on)."""
    return read_json(STUDY_PUBLISHED)


# --- report layout: reports/<profile>/ and figures/<profile>/ under one output root ------------------------

OUTPUT_ROOT_ENV = "EVOPRUNE_OUTPUT_ROOT"


def output_root() -> Path:
    """Where reports/ and figures/ live: ``$EVOPRUNE_OUTPUT_ROOT`` when set (tests), else the repository."""
    return Path(os.environ.get(OUTPUT_ROOT_ENV) or ROOT).resolve()


@dataclass(frozen=True)
class ReportPaths:
    profile: str
    root: Path

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.profile

    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures" / self.profile

    @property
    def executed(self) -> Path:
        return self.reports / "executed"

    @property
    def timings(self) -> Path:
        return self.reports / "timings.json"

    @property
    def summary(self) -> Path:
        return self.reports / "summary.json"

    @property
    def measurements(self) -> Path:
        return self.reports / "measurements.jsonl"

    @property
    def report_md(self) -> Path:
        return self.reports / "REPORT.md"

    def record(self, name: str) -> Path:
        return self.reports / f"{name}.json"

    def table(self, name: str) -> Path:
        """A table's path without suffix: write_table adds .csv and .md."""
        return self.tables / name

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def search(self, mode: str) -> Path:
        return self.reports / "search" / mode

    def require(self, path: Path, notebook: str) -> Path:
        """``path`` if it exists, else an error naming the notebook that writes it."""
        if not Path(path).exists():
            raise EvopruneError(f"{path} is missing: run notebook {notebook} first, e.g. `python -m evoprune "
                                f"notebook --profile {self.profile} notebooks/{notebook}.py`.")
        return Path(path)


def report_paths(profile: str, root: str | Path | None = None) -> ReportPaths:
    return ReportPaths(profile, Path(root).resolve() if root else output_root())


def resolve_data(data: str | None) -> str:
    """A data setting as the loaders take it: None means the default, a relative directory is relative to the
    repository root (profiles say ``../shared/data``), and ``wikitext2`` means the hub."""
    from evoprune.data import HUB, PYTHON_DOCS, default_data
    if data is None:
        return default_data()
    if data in (HUB, PYTHON_DOCS) or Path(data).is_absolute():
        return data
    return os.path.normpath(ROOT / data)  # not resolve(): a symlinked data directory keeps the name it was given


# --- atomic text, tables and records ----------------------------------------------------------------------

def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (see write_json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def format_cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], stem: str | Path, columns: list[str] | None = None) -> tuple[Path, Path]:
    """Write rows as ``stem.csv`` (full precision) and ``stem.md`` (rounded, for reading)."""
    if not rows:
        raise EvopruneError(f"no rows to write to {stem}.")
    stem = Path(stem)
    columns = columns or list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return (write_text(stem.with_suffix(".csv"), buf.getvalue()),
            write_text(stem.with_suffix(".md"), markdown_table(rows, columns)))


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file, numbers converted."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def record_timing(paths: ReportPaths, notebook: str, wall_s: float, parameters: dict) -> dict:
    """Add one notebook's wall time (and the parameters it ran with) to ``timings.json``."""
    timings = read_json(paths.timings) if paths.timings.exists() else {}
    timings[notebook] = {"wall_s": wall_s, "parameters": parameters,
                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(paths.timings, timings)
    return timings


# --- summary.json: schema and validation ------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ppl(v) -> str | None:
    return None if _is_number(v) and v >= 1 else "a perplexity (a finite number >= 1)"


def _check_rate(v) -> str | None:
    return None if _is_number(v) and 0 <= v <= 1 else "a rate in [0, 1]"


def _check_count(v) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "a non-negative integer"


def _check_seconds(v) -> str | None:
    return None if _is_number(v) and v >= 0 else "a non-negative number of seconds"


def _check_number(v) -> str | None:
    return None if _is_number(v) else "a finite number"


def _check_genome(v) -> str | None:
    ok = isinstance(v, list) and v and all(_check_rate(g) is None for g in v)
    return None if ok else "a non-empty list of rates in [0, 1]"


def _type(kind: type, name: str):
    return lambda v: None if isinstance(v, kind) and v else f"a non-empty {name}"


SUMMARY_SCHEMA = {"profile": _type(str, "string"), "model": _type(str, "string"), "data": _type(dict, "object"),
                  "protocol": _type(dict, "object"), "provenance": _type(dict, "object"),
                  "dense": {"test_ppl": _check_ppl, "seed_protocol_ppl": _check_ppl},
                  "uniform": [{"sparsity": _check_rate, "criterion": _type(str, "string"), "test_ppl": _check_ppl}],
                  "ga": [{"mode": _type(str, "string"), "criterion": _type(str, "string"), "target": _check_rate,
                          "block_sparsity": _check_rate, "genome": _check_genome, "fitness": _check_number,
                          "test_ppl": _check_ppl, "seed_protocol_ppl": _check_ppl, "evaluations": _check_count,
                          "forward_tokens": _check_count, "wall_s": _check_seconds}]}


def _schema_problems(obj, schema, where: str) -> list[str]:
    if callable(schema):
        expected = schema(obj)
        return [f"{where} is {obj!r}, expected {expected}"] if expected else []
    if isinstance(schema, list):
        if not isinstance(obj, list) or not obj:
            return [f"{where} must be a non-empty list"]
        return [p for i, item in enumerate(obj) for p in _schema_problems(item, schema[0], f"{where}[{i}]")]
    if not isinstance(obj, dict):
        return [f"{where} must be an object"]
    problems = [f"{where}.{key} is missing" for key in schema if key not in obj]
    return problems + [p for key, sub in schema.items() if key in obj
                       for p in _schema_problems(obj[key], sub, f"{where}.{key}")]


def validate_summary(obj) -> dict:
    """Check a summary.json object against SUMMARY_SCHEMA (extra keys are allowed); raise EvopruneError listing
    every problem, else return the object."""
    problems = _schema_problems(obj, SUMMARY_SCHEMA, "summary")
    if problems:
        raise EvopruneError("invalid summary: " + "; ".join(problems))
    return obj
