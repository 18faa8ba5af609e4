"""Run notebooks under a parameter profile: ``python -m evoprune notebook --profile smoke notebooks/01_baseline.py``.

``params/<profile>.yaml`` holds shared keys (``model``, ``data``, ...) and one section per notebook stem
(``03_ga_search: {population: 8}``). A notebook gets the shared keys its ``parameters`` cell declares, then its
own section, then the ``--set`` overrides it declares. A section key the notebook does not declare is an error,
and so is a shared or ``--set`` key that no notebook declares (a typo). ``profile`` is always the profile's name.
``notebooks: [01_baseline, ...]`` names the notebooks ``make reproduce`` runs for the profile (default: all).

The notebook (jupytext py:percent) is converted to ipynb and run by papermill on this environment's ``python3``
kernel. The executed copy goes to ``reports/<profile>/executed/NN_name.ipynb`` only when every cell succeeded
(a failure leaves ``NN_name.failed.ipynb``), and its wall time to ``reports/<profile>/timings.json``.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from evoprune import EvopruneError
from evoprune.records import OUTPUT_ROOT_ENV, record_timing, report_paths, ReportPaths, ROOT

PARAMS_DIR = ROOT / "params"
KERNEL = "python3"
SECTION = re.compile(r"^\d\d_\w+$")  # a notebook stem such as 03_ga_search


# --- profiles ---------------------------------------------------------------------------------------------

def available_profiles() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def load_profile(profile: str) -> dict:
    path = PARAMS_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise EvopruneError(f"unknown profile {profile!r}: use one of {', '.join(available_profiles())} "
                            f"(files in {PARAMS_DIR}).")
    obj = yaml.safe_load(path.read_text()) or {}
    if obj.get("profile", profile) != profile:
        raise EvopruneError(f"{path} says profile: {obj['profile']}; it must match the file name ({profile}).")
    return obj


def split_profile(obj: dict) -> tuple[dict, dict[str, dict]]:
    """(shared keys, sections by notebook stem); the profile's notebook list is neither."""
    sections = {k: v for k, v in obj.items() if SECTION.match(k)}
    for stem, section in sections.items():
        if not isinstance(section, dict):
            raise EvopruneError(f"profile section {stem} must be a mapping of parameter: value.")
    return {k: v for k, v in obj.items() if k not in sections and k != "notebooks"}, sections


def profile_notebooks(profile: str) -> list[Path]:
    """The notebooks a profile runs, in order: its ``notebooks`` list, else every ``notebooks/NN_*.py``."""
    every = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    named = load_profile(profile).get("notebooks")
    if named is None:
        return every
    unknown = sorted(set(named) - {p.stem for p in every})
    if unknown:
        raise EvopruneError(f"profile {profile} lists notebooks {unknown} that notebooks/ does not hold; notebooks: "
                            f"{', '.join(p.stem for p in every)}.")
    return [p for p in every if p.stem in named]


# --- the parameters cell ----------------------------------------------------------------------------------

def read_notebook(path: Path):
    import jupytext
    if not path.is_file():
        raise EvopruneError(f"notebook {path} does not exist.")
    return jupytext.read(path)


def literal_assignment(stmt: ast.stmt) -> tuple[str, object]:
    """(name, value) of ``name = literal`` or ``name: type = literal``; ValueError for anything else."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    if len(targets) != 1 or not isinstance(targets[0], ast.Name) or getattr(stmt, "value", None) is None:
        raise ValueError("not a single-name assignment")
    return targets[0].id, ast.literal_eval(stmt.value)


def declared_parameters(nb, path: Path) -> dict:
    """Name -> default of the one cell tagged ``parameters``, which must hold literal assignments only."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise EvopruneError(f"{path} must have exactly one cell tagged parameters; it has {len(cells)}.")
    declared = {}
    for stmt in ast.parse(cells[0].source).body:
        try:
            name, value = literal_assignment(stmt)
        except (ValueError, TypeError):
            raise EvopruneError(f"{path}, line {stmt.lineno} of the parameters cell: only `name = literal` "
                                f"assignments belong there; derive values in the next cell.") from None
        declared[name] = value
    return declared


def notebook_parameters(profile: str, path: Path, overrides: dict | None = None) -> dict:
    """The parameters a notebook runs with under a profile (see the module docstring for the rules)."""
    shared, sections = split_profile(load_profile(profile))
    overrides = overrides or {}
    siblings = {p.stem: declared_parameters(read_notebook(p), p)
                for p in sorted(path.parent.glob("[0-9][0-9]_*.py"))}
    declared = siblings.get(path.stem) or declared_parameters(read_notebook(path), path)
    for stem in sections:
        if stem not in siblings:
            raise EvopruneError(f"profile {profile} has a section {stem} but {path.parent} has no {stem}.py; "
                                f"notebooks: {', '.join(siblings)}.")
    anywhere = set(declared).union(*siblings.values())
    for origin, keys in ((f"profile {profile}: shared key", shared), ("--set", overrides)):
        for key in keys:
            if key not in anywhere:
                raise EvopruneError(f"{origin} {key!r} is not a parameter of any notebook; valid: "
                                    f"{', '.join(sorted(anywhere))}.")
    section = sections.get(path.stem, {})
    for key in section:
        if key not in declared:
            raise EvopruneError(f"profile {profile}, section {path.stem}: {key!r} is not a parameter of "
                                f"{path.name}; valid: {', '.join(declared)}.")
    return {**{k: v for k, v in shared.items() if k in declared}, **section,
            **{k: v for k, v in overrides.items() if k in declared}, "profile": profile}


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings, VALUE read as YAML (``8``, ``0.5``, ``null``, ``[1, 2]``, ``text``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvopruneError(f"--set {item!r}: write KEY=VALUE, e.g. --set population=8.")
        out[key.strip()] = yaml.safe_load(value)
    return out


# --- running ----------------------------------------------------------------------------------------------

def ensure_kernel() -> None:
    """Make sure kernel ``python3`` runs this interpreter (so notebooks import this evoprune and torch)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install
        install(kernel_name=KERNEL, prefix=sys.prefix)
        return
    exe = spec.argv[0]
    if exe in ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"):
        return  # jupyter_client launches these as sys.executable
    if Path(exe).absolute() != Path(sys.executable).absolute():
        raise EvopruneError(f"kernel {KERNEL} ({spec.resource_dir}) runs {exe}, not {sys.executable}. Remove that "
                            f"kernel spec or run `{sys.executable} -m ipykernel install --sys-prefix` and put "
                            f"this environment's spec first.")


@contextmanager
def environment(name: str, value: str):
    """Set an environment variable for the kernels started inside the block."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def execute(nb, parameters: dict, paths: ReportPaths, stem: str, log_output: bool = False) -> Path:
    """Run a notebook with papermill; the executed copy gets its final name only if every cell succeeded."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError
    paths.executed.mkdir(parents=True, exist_ok=True)
    final, partial, failed = (paths.executed / f"{stem}{suffix}"
                              for suffix in (".ipynb", ".partial.ipynb", ".failed.ipynb"))
    final.unlink(missing_ok=True)  # a stale copy from an earlier run must not pass for this one
    failed.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp, environment(OUTPUT_ROOT_ENV, str(paths.root)):
        source = Path(tmp) / f"{stem}.ipynb"
        jupytext.write(nb, source, fmt="ipynb")
        try:
            papermill.execute_notebook(source, partial, parameters=parameters, kernel_name=KERNEL, language="python",
                                       cwd=ROOT, progress_bar=True, log_output=log_output)
        except BaseException as err:  # interrupted or failed: keep what ran, under a name that says so
            if partial.exists():
                partial.replace(failed)
            if isinstance(err, PapermillExecutionError):
                raise EvopruneError(f"notebook {stem} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                                    f"(executed cells: {failed}).") from None
            raise
    partial.replace(final)
    return final


def run_notebook(path: str | Path, profile: str, output_root: str | Path | None = None,
                 overrides: dict | None = None, log_output: bool = False) -> dict:
    """Run one notebook under a profile; return where the executed copy went and how long it took."""
    path = Path(path).resolve()
    parameters = notebook_parameters(profile, path, overrides)
    ensure_kernel()
    paths = report_paths(profile, output_root)
    start = time.perf_counter()
    executed = execute(read_notebook(path), parameters, paths, path.stem, log_output)
    wall_s = time.perf_counter() - start
    record_timing(paths, path.stem, wall_s, parameters)
    return {"notebook": path.stem, "executed": str(executed), "wall_s": wall_s, "parameters": parameters}
