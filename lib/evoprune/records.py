"""Records: the typed record of a finished search, and the files every record and table is written to and read
from (atomic JSON, CSV and markdown tables) under ``reports/<profile>/`` (``ReportPaths``). No torch."""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evoprune import EvopruneError, write_atomically

ROOT = Path(__file__).resolve().parents[2]
REPORTED_DTYPE = "float32"  # every reported (test) perplexity of the study
STUDY_PUBLISHED = ROOT / "data" / "study_published.json"


# --- the record of a finished search ------------------------------------------------------------------------

@dataclass
class Spent:
    """A search's budget spent, and where in it the best genome was first found."""
    evaluations: int
    forward_tokens: int
    wall_s: float
    best_found_at: dict | None = None


@dataclass
class SearchRecord:
    """A finished search, as its run writes it (``<out>/result.json``) and reports, plots and notebooks read it.
    ``genome``: the best per-gene rates (a block-removal search: the removed blocks); ``config``: the search's
    identity (optimizer settings and fitness spec); ``start``: each rule allocation's fitness where the search
    scored it (uniform always); ``history``: one row per generation; ``progress``: a race's parent on paired
    samples (``search.race_progress``); ``test``: the reported test numbers (of uniform too, under ``uniform``)."""
    genome: list
    fitness: float
    spent: Spent
    config: dict
    provenance: dict
    start: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    progress: list = field(default_factory=list)
    test: dict = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.config["strategy"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> "SearchRecord":
        return cls(**{**obj, "spent": Spent(**obj["spent"])})

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> "SearchRecord":
        return cls.from_dict(read_json(path))


# --- files ----------------------------------------------------------------------------------------------------

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


def in_reports(name: str) -> property:
    """A fixed file or folder of ``reports/<profile>/``."""
    return property(lambda paths: paths.reports / name)


@dataclass(frozen=True)
class ReportPaths:
    profile: str
    root: Path

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.profile

    @property
    def figures(self) -> Path:
        return self.root / "figures" / self.profile

    tables = in_reports("tables")
    executed = in_reports("executed")
    timings = in_reports("timings.json")
    summary = in_reports("summary.json")
    measurements = in_reports("measurements.jsonl")
    report_md = in_reports("REPORT.md")
    profile_choice = in_reports("profile_choice.json")  # how `make reproduce` chose the profile (preflight)

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

    def read(self, name: str, notebook: str) -> dict:
        """The record ``name``: an error naming ``notebook``, which writes it, when it is missing."""
        return read_json(self.require(self.record(name), notebook))

    def read_timings(self) -> dict:
        """``timings.json``, or {} before any notebook has finished."""
        return read_json(self.timings) if self.timings.exists() else {}


def report_paths(profile: str, root: str | Path | None = None) -> ReportPaths:
    return ReportPaths(profile, Path(root).resolve() if root else output_root())


# --- tables -------------------------------------------------------------------------------------------------

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
    timings = paths.read_timings()
    timings[notebook] = {**timings.get(notebook, {}), "forward_tokens": tokens, "read_back": read_back}
    write_json(paths.timings, timings)


def record_timing(paths: ReportPaths, notebook: str, wall_s: float, parameters: dict) -> dict:
    """Add one notebook's wall time (and the parameters it ran with) to ``timings.json``."""
    timings = paths.read_timings()
    timings[notebook] = {**timings.get(notebook, {}), "wall_s": wall_s, "parameters": parameters,
                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(paths.timings, timings)
    return timings


