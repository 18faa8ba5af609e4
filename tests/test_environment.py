from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(text: str) -> set[str]:
    return {line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()}


def test_environment_yml_lists_the_pinned_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == requirement_lines((ROOT / "requirements.txt").read_text())


def test_torch_is_pinned_to_the_wheel_on_disk():
    assert "torch==2.13.0" in requirement_lines((ROOT / "requirements.txt").read_text())
