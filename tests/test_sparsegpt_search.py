"""SparseGPT as a criterion: through the session and the command line, and searched by the race on its level grid
(tiny-gpt2 on the local WikiText copy; its level database is built once under data/cache/levels)."""
import json

import pytest

from evoprune import EvopruneError
from evoprune.cli import main
from evoprune.objective import build_objective, split_settings
from evoprune.search import CHECKPOINT, optimize
from evoprune.search_runs import run_search
from evoprune.session import Session


@pytest.fixture(scope="module")
def session(data_dir):
    return Session("tiny-gpt2", data_dir)


def race(target=0.5, generations=3, **extra):
    return split_settings({"model": "tiny-gpt2", "target": target, "strategy": "race", "criterion": "sparsegpt",
                           "generations": generations, "offspring": 3, "stages": 2, "promote": 2, "seq_len": 128,
                           "test_windows": 1, "study_windows": 0, "dtype": "float32", **extra})


def test_the_session_prunes_to_grid_levels_and_refuses_rates_between_them(session):
    pruner = session.apply(0.5, "sparsegpt")
    assert pruner.criterion == "sparsegpt" and pruner.block_sparsity() == pytest.approx(0.5, abs=1e-4)
    session.restore()
    assert pruner.zeros() == 0
    with pytest.raises(EvopruneError, match="snap_to_grid"):
        session.apply(0.45, "sparsegpt")


def test_a_race_moves_between_levels_at_exactly_the_target(session, tmp_path):
    settings, spec = race(genes="group")
    record = run_search(session, settings, spec, tmp_path / "run", progress=False)
    grid = record.provenance["calibration"]["grid"]
    assert record.provenance["calibration"]["windows"] == 32 and record.provenance["calibration"]["seq_len"] == 512
    assert all(any(abs(g - level) < 1e-9 for level in grid) for g in record.genome)
    assert record.test["block_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert {"uniform", "OWL", "AlphaPruning"} <= set(record.start)


def test_a_sparsegpt_search_resumes_after_a_kill(session, tmp_path):
    settings, spec = race(generations=4)
    objective = build_objective(session, spec)
    sizes = objective.pruner.gene_sizes()
    whole = optimize(objective, sizes, settings, tmp_path / "whole").outcome()

    class Killed(Exception):
        pass

    calls = []

    def dies(genome, sample):
        calls.append(genome)
        if len(calls) > 8:
            raise Killed
        return objective(genome, sample)

    dies.grid = objective.grid
    with pytest.raises(Killed):
        optimize(dies, sizes, settings, tmp_path / "killed", tokens_per_window=spec.seq_len)
    assert 0 < json.loads((tmp_path / "killed" / CHECKPOINT).read_text())["generation"] < 4
    resumed = optimize(objective, sizes, settings, tmp_path / "killed").outcome()
    assert resumed.genome == whole.genome and resumed.fitness == whole.fitness


def test_other_strategies_and_targets_between_levels_are_refused_before_anything_loads():
    with pytest.raises(EvopruneError, match="--strategy race"):
        split_settings({"target": 0.5, "strategy": "elitist", "criterion": "sparsegpt"})
    with pytest.raises(EvopruneError, match="--target 0.45 is not a level"):
        split_settings({"target": 0.45, "strategy": "race", "criterion": "sparsegpt"})
    assert main(["search", "--model", "tiny-gpt2", "--criterion", "sparsegpt", "--target", "0.45",
                 "--out", "never-made"]) == 2


def test_the_command_line_evaluates_and_exports_sparsegpt(data_dir, tmp_path, capsys):
    assert main(["eval", "--model", "tiny-gpt2", "--data", data_dir, "--criterion", "sparsegpt", "--rates", "0.7",
                 "--max-windows", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["block_sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert main(["eval", "--model", "tiny-gpt2", "--data", data_dir, "--criterion", "sparsegpt", "--rates", "0.65",
                 "--max-windows", "1"]) == 2
    assert "snap_to_grid" in capsys.readouterr().err
