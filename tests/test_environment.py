from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(lines) -> set[str]:
    """Requirements without comments and pip options (``--extra-index-url ...``)."""
    stripped = (line.split("#")[0].strip() for line in lines)
    return {line for line in stripped if line and not line.startswith("-")}


def test_environment_yml_lists_the_pinned_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert requirement_lines(pip_section) == requirement_lines((ROOT / "requirements.txt").read_text().splitlines())


def test_conda_installs_the_cpu_build_of_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_section


def test_torch_is_pinned_to_the_wheel_on_disk():
    assert "torch==2.13.0" in requirement_lines((ROOT / "requirements.txt").read_text().splitlines())
