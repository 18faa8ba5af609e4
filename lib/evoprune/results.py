"""Result files: provenance on every record, and writes that never leave a half-written file behind."""
from __future__ import annotations

import csv
import hashlib
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

from evoprune import EvopruneError, write_atomically

ROOT = Path(__file__).resolve().parents[2]
REPORTED_DTYPE = "float32"  # every reported (test) perplexity of the study
PROTOCOLS = {
    "primary": "non-overlapping 1024-token windows over the test split, tail dropped; "
               "PPL = exp(total NLL / predicted tokens)",
    "study": "the published study's protocol: 1024-token windows every 512 tokens, 128 drawn with "
             "random.seed(365); PPL = exp(mean of per-window mean losses)",
}
PACKAGES = ("torch", "transformers", "numpy", "evoprune")
STUDY_PUBLISHED = ROOT / "data" / "study_published.json"
# the modules whose code, with the weights, data and settings in a measurement's key (the dtype already resolved),
# decides the number
MEASURING_CODE = ("models.py", "data.py", "pruning.py", "perplexity.py", "prefix.py", "session.py")


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


def measuring_code() -> str:
    """A hash of the code that decides a measured perplexity and of the torch and transformers it runs on: a
    logged measurement is reused until that code changes, whatever else is committed meanwhile."""
    digest = hashlib.sha256()
    for name in MEASURING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    for name in ("torch", "transformers"):
        digest.update(f"{name}=={metadata.version(name)}".encode())
    return digest.hexdigest()[:16]


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch  # imported here: reading and writing records needs no torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
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


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically: a reader sees the old file or the complete new one, never a partial one."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    """A JSON file; a corrupt or truncated one is an error naming the file and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvopruneError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): it was probably cut short "
                            f"or edited by hand. Delete it (and rerun what writes it) or restore it from git.") from None


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


def portable_data(data: str) -> str:
    """A data directory as a path relative to the repository root (how profiles name it), so a search's config,
    and with it the committed results, mean the same search in a clone elsewhere with the data beside it."""
    from evoprune.data import HUB, PYTHON_DOCS
    return data if data in (HUB, PYTHON_DOCS) else os.path.relpath(os.path.abspath(data), ROOT)


# --- records written under earlier names --------------------------------------------------------------------

RENAMED_KEYS = {"seed_protocol_ppl": "study_ppl", "seed_protocol_windows": "study_windows", "mode": "strategy"}
RENAMED_STRATEGIES = {"seed": "published", "default": "elitist"}


def upgrade(obj):
    """A record written before the search strategies were renamed (``mode`` seed/default, ``seed_protocol_ppl``),
    read under today's names (``strategy`` published/elitist, ``study_ppl``). Run names are left as they are."""
    if isinstance(obj, list):
        return [upgrade(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    new = {}
    for key, value in obj.items():
        key = RENAMED_KEYS.get(key, key)
        new[key] = RENAMED_STRATEGIES.get(value, value) if key == "strategy" else upgrade(value)
    return new


def read_record(path: str | Path) -> dict:
    """A record (``reports/<profile>/*.json``, ``summary.json``) under today's names."""
    return upgrade(read_json(path))


# --- tables and records -------------------------------------------------------------------------------------

def format_cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def all_columns(rows: list[dict]) -> list[str]:
    """Every key of the rows, in the order they first appear (rows may lack some)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    columns = columns or all_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> Path:
    """Write rows as CSV atomically (full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def write_table(rows: list[dict], stem: str | Path, columns: list[str] | None = None) -> tuple[Path, Path]:
    """Write rows as ``stem.csv`` (full precision) and ``stem.md`` (rounded, for reading)."""
    if not rows:
        raise EvopruneError(f"no rows to write to {stem}.")
    stem = Path(stem)
    columns = columns or all_columns(rows)
    return (write_csv(stem.with_suffix(".csv"), rows, columns),
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


def record_tokens(paths: ReportPaths, notebook: str, tokens: dict[str, int], read_back: dict[str, int]) -> None:
    """A notebook's forward tokens by dtype and what it read back instead of computing, in its ``timings.json``
    entry (its last cell writes them; the runner adds the wall time when the notebook has finished)."""
    timings = read_json(paths.timings) if paths.timings.exists() else {}
    timings[notebook] = {**timings.get(notebook, {}), "forward_tokens": tokens, "read_back": read_back}
    write_json(paths.timings, timings)


def record_timing(paths: ReportPaths, notebook: str, wall_s: float, parameters: dict) -> dict:
    """Add one notebook's wall time (and the parameters it ran with) to ``timings.json``."""
    timings = read_json(paths.timings) if paths.timings.exists() else {}
    timings[notebook] = {**timings.get(notebook, {}), "wall_s": wall_s, "parameters": parameters,
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
                  "dense": {"test_ppl": _check_ppl, "study_ppl": _check_ppl},
                  "uniform": [{"sparsity": _check_rate, "criterion": _type(str, "string"), "test_ppl": _check_ppl}],
                  "ga": [{"strategy": _type(str, "string"), "criterion": _type(str, "string"), "target": _check_rate,
                          "block_sparsity": _check_rate, "genome": _check_genome, "fitness": _check_number,
                          "test_ppl": _check_ppl, "study_ppl": _check_ppl, "evaluations": _check_count,
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
