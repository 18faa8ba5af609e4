"""Which profile `make reproduce` runs when none is given, and the command line's defaults."""
import os
import subprocess

import pytest

from evoprune import EvopruneError, models, preflight
from evoprune.cli import build_parser, main, search_settings
from evoprune.records import OUTPUT_ROOT_ENV, ROOT, read_json, report_paths


@pytest.fixture
def offline_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(tmp_path))
    return tmp_path


def no_local_data(monkeypatch):
    def missing(data_dir, split):
        raise EvopruneError(f"{data_dir} has no {split} split.")
    monkeypatch.setattr("evoprune.data.local_file", missing)


def test_auto_runs_offline_without_the_hub_and_says_why_first(capsys, data_dir, offline_machine):
    if not os.path.isfile(ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "test.txt"):
        pytest.skip("the offline profile reads ../shared/data")
    assert main(["check", "--profile", "auto"]) == 0
    out, err = capsys.readouterr()
    assert out == "offline\n"
    assert err.startswith("make reproduce: no PROFILE given, running profile offline") and "'gpt2'" in err
    record = read_json(report_paths("offline", offline_machine).profile_choice)
    assert record["profile"] == "offline" and record["chosen"] == "auto" and "gpt2" in record["why"]


def test_auto_runs_paper_where_the_hub_is_reachable(capsys, monkeypatch, offline_machine):
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    assert main(["check", "--profile", "auto"]) == 0
    assert capsys.readouterr().out == "paper\n"
    assert read_json(report_paths("paper", offline_machine).profile_choice)["chosen"] == "auto"


def test_auto_with_neither_names_both_ways(capsys, monkeypatch, offline_machine):
    no_local_data(monkeypatch)
    assert main(["check", "--profile", "auto"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no profile can run here" in err and "paper:" in err and "offline:" in err
    assert "../shared/data" in err and len(err.strip().splitlines()) == 1
    assert not (offline_machine / "reports").exists()


def test_a_given_profile_is_recorded_as_given(capsys, monkeypatch, offline_machine):
    assert main(["check", "--profile", "smoke", "--record"]) == 0
    record = read_json(report_paths("smoke", offline_machine).profile_choice)
    assert record["chosen"] == "given" and record["why"] == "PROFILE=smoke"


def test_make_reproduce_without_profile_prints_the_choice_first(data_dir, offline_machine):
    if not os.path.isfile(ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "test.txt"):
        pytest.skip("the offline profile reads ../shared/data")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    # -n: print the commands, run none but the choice; -o: never (re)build the environment here
    run = subprocess.run(["make", "-n", "-o", ".venv/.installed", "reproduce"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("make reproduce: no PROFILE given, running profile offline")
    assert "check --profile offline" in run.stdout and "--profile paper" not in run.stdout
    forced = subprocess.run(["make", "-n", "-o", ".venv/.installed", "reproduce", "PROFILE=smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert "check --profile smoke --record" in forced.stdout and "auto" not in forced.stdout


# --- the command line's defaults --------------------------------------------------------------------------

def search_args(*argv):
    return build_parser().parse_args(["search", "--target", "0.45", "--out", "x", *argv])


@pytest.mark.parametrize("cached, expected", [(False, models.SMOLLM2), (True, "gpt2")])
def test_default_model_is_what_can_load_here(monkeypatch, cached, expected):
    monkeypatch.setattr(preflight, "model_available", lambda name: cached)
    assert preflight.default_model() == expected
    assert search_settings(search_args())[1].model == expected
    assert search_settings(search_args("--model", "tiny-gpt2"))[1].model == "tiny-gpt2"


def test_search_defaults_to_the_race_on_a_token_budget(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings, _ = search_settings(search_args())
    assert settings.strategy == "race" and settings.budget_tokens == 450_000
    assert search_settings(search_args("--budget-tokens", "20000"))[0].budget_tokens == 20000
    elitist, _ = search_settings(search_args("--strategy", "elitist"))
    assert elitist.strategy == "elitist" and elitist.budget_tokens is None


def test_help_says_the_defaults(capsys):
    for command in ("search", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "gpt2 where the hub is reachable or it is cached, else smollm2-135m" in text
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: race)" in text and "(default: 450000 with race)" in text
