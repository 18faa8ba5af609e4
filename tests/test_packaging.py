"""Packaging: pyproject.toml declares what the code imports (ranges), requirements.txt pins one version of each,
and the built wheel installs an `evoprune` command that runs (offline: the wheel goes in with --no-deps, into a
fresh venv that sees this venv's packages)."""
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def declared() -> dict[str, list[Requirement]]:
    """Requirements of pyproject.toml by group: "" for the runtime dependencies, else the extra's name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def pins() -> dict[str, str]:
    """Name -> pinned version of requirements.txt."""
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    out = {}
    for line in filter(None, lines):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.txt must pin exactly: {line}"
        out[canonicalize_name(req.name)] = spec.version
    return out


def test_extras_are_the_documented_ones():
    assert set(declared()) == {"", "lab", "test", "ray", "downstream", "export"}


def test_requirements_pin_exactly_the_declared_packages():
    names = [canonicalize_name(r.name) for reqs in declared().values() for r in reqs]
    assert len(names) == len(set(names)), "a package is declared twice"
    assert sorted(names) == sorted(pins())


def test_each_pin_is_inside_its_declared_range():
    pinned = pins()
    for reqs in declared().values():
        for req in reqs:
            assert req.specifier, f"{req.name} has no version range"
            assert req.specifier.contains(pinned[canonicalize_name(req.name)]), (req, pinned[req.name])


def test_runtime_dependencies_cover_the_library_but_not_the_lab():
    runtime = {canonicalize_name(r.name) for r in declared()[""]}
    assert {"torch", "transformers", "numpy", "matplotlib", "pyyaml", "tqdm", "gguf"} <= runtime
    assert not runtime & {"jupyterlab", "papermill", "pytest", "ray", "lm-eval", "compressed-tensors"}


def test_the_built_wheel_installs_a_working_command(tmp_path):
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):  # built from a copy: the build leaves build/ behind
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, src],
                   check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("evoprune-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # a plain path line: this venv's packages become importable, its editable evoprune (a .pth there) does not
    (Path(site) / "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel], check=True)

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([python, "-c", "import evoprune; print(evoprune.__file__)"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), where
    help_text = subprocess.run([venv / "bin" / "evoprune", "--help"], cwd=tmp_path, env=env, check=True,
                               capture_output=True, text=True).stdout
    assert "usage: evoprune" in help_text and "notebook" in help_text
    requires = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.requires('evoprune'))"],
                              cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert "torch" in requires and 'extra == "lab"' in requires
