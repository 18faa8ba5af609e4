"""`make bench`'s child scripts: the SparseGPT cost script's genomes and the figures it prints (on tiny-gpt2)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def sparsegpt_cost():
    sys.path.insert(0, str(BENCH))  # the script imports bench/run.py's helpers, as it does when run
    try:
        import sparsegpt_cost
    finally:
        sys.path.remove(str(BENCH))
    return sparsegpt_cost


def test_apply_genomes_are_grid_levels_that_move_every_gene(sparsegpt_cost):
    grid = [round(0.1 * k, 10) for k in range(10)]
    genomes = sparsegpt_cost.level_genomes(grid, 7, 6)
    assert len(genomes) == 6 and all(len(g) == 7 for g in genomes)
    assert all(rate in grid and 0.3 <= rate <= 0.6 for g in genomes for rate in g)
    assert all(a != b for before, after in zip(genomes, genomes[1:]) for a, b in zip(before, after))
    assert sparsegpt_cost.level_genomes(grid, 7, 6) == genomes  # seeded: the same apply work on every run


@pytest.mark.slow
def test_sparsegpt_cost_prints_its_figures_as_one_json_line(data_dir):
    done = subprocess.run([sys.executable, str(BENCH / "sparsegpt_cost.py"), "--model", "tiny-gpt2", "--data",
                           data_dir], check=True, capture_output=True, text=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["model"] == "tiny-gpt2" and figures["criterion"] == "sparsegpt"
    assert figures["calibration"] == [32, 512] and figures["database_levels"] == 9
    for key in ("build_over_forward", "database_gib", "apply_over_eval", "race_child_apply_over_eval",
                "search_peak_rss_gib"):
        assert figures[key] > 0, key
    assert figures["race_child_apply_s"] < figures["apply_s"]  # a child moves a few genes, not all
    assert figures["build_over_forward"] == pytest.approx(figures["build_s"] / figures["dense_forward_s"])
    assert figures["apply_over_eval"] == pytest.approx(figures["apply_s"] / figures["eval_s"])
