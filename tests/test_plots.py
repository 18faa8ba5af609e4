"""Figures 2 and 3 and notebook 05's, built from small records: what each panel shows, not how it looks."""
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from evoprune import plots

DENSE = 20.0
SINGLE = [{"removed": [b], "test_ppl": DENSE * (1.3 + b / 10)} for b in range(30)]
POINTS = [{"removed": [0], "chosen": "best set", "share": 1 / 30, "test_ppl": 26.0, "over_dense": 26.0 / DENSE},
          {"removed": [1, 2, 3, 4, 6, 9], "chosen": "removal GA", "share": 0.2, "test_ppl": 165.0,
           "over_dense": 165.0 / DENSE}]


def test_block_removal_shows_each_single_block_and_the_chosen_sets_relative_to_dense():
    ax = plots.block_removal(SINGLE, POINTS, DENSE, 30, "m").axes[0]
    assert ax.get_title() == "Whole blocks removed — m" and ax.get_yscale() == "log" and "dense" in ax.get_ylabel()
    singles, best, ga, dense = ax.get_lines()
    assert list(singles.get_ydata()) == pytest.approx([r["test_ppl"] / DENSE for r in SINGLE])
    assert list(singles.get_xdata()) == pytest.approx([100 / 30] * 30)
    assert (best.get_xdata()[0], best.get_ydata()[0]) == pytest.approx((100 / 30, 26 / DENSE))
    assert (ga.get_xdata()[0], ga.get_ydata()[0]) == pytest.approx((20.0, 165 / DENSE))
    assert to_hex(ga.get_color()) != to_hex(best.get_color()) and dense.get_ydata()[0] == 1.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["each single block", "best set", "removal GA",
                                                                   "dense"]
    assert [t.get_text() for t in ax.texts] == ["0", "1, 2, 3, 4, 6, 9"]  # each set labelled with its blocks


def test_layer_profile_draws_one_genome_per_run_as_a_line():
    fig = plots.layer_profile({"seed": [0.4, 0.5, 0.6]}, uniform=0.45)
    ax = fig.axes[0]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([40, 50, 60])
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_layer_profile_draws_the_seeds_mean_and_band():
    seeds = [[0.4, 0.5, 0.6], [0.5, 0.5, 0.4], [0.6, 0.2, 0.5]]
    ax = plots.layer_profile({"default": seeds}).axes[0]
    mean = ax.get_lines()[0]
    assert list(mean.get_ydata()) == pytest.approx([50, 40, 50])
    assert "3 seeds" in mean.get_label()
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(20) and max(ys) == pytest.approx(60)


def test_figure1_draws_a_search_over_seeds_as_one_star_with_its_range():
    uniform = [{"sparsity": s, "test_ppl": 10 + 100 * s, "study_ppl": 11 + 100 * s} for s in (0.0, 0.45)]
    row = {"block_sparsity": 0.45, "study_ppl": 50.0}
    groups = {"race (3 seeds)": [{**row, "test_ppl": p} for p in (40.0, 45.0, 56.0)],
              "race-kl": [{**row, "test_ppl": 47.0}]}
    ax = plots.figure1(uniform, groups).axes[0]
    stars = {c.get_label(): c for c in ax.containers}
    seeds = stars["GA race (3 seeds), primary protocol, mean and range"]
    assert seeds.lines[0].get_ydata()[0] == pytest.approx(47.0)
    (bar,) = seeds.lines[2]
    assert bar.get_segments()[0][:, 1] == pytest.approx([40.0, 56.0])
    kl = stars["GA race-kl, primary protocol"].lines[0]
    assert kl.get_xdata()[0] == seeds.lines[0].get_xdata()[0] == pytest.approx(45.0)  # at their true sparsity
    assert to_hex(kl.get_color()) != to_hex(seeds.lines[0].get_color())
    side = plots.figure1(uniform, groups).axes[1]  # one column per search, uniform at its sparsity beside it
    assert [t.get_text() for t in side.get_xticklabels()] == ["race (3 seeds)\n45.0%", "race-kl\n45.0%"]


def test_convergence_puts_races_on_their_paired_progress_and_seeds_in_one_colour():
    history = [{"forward_tokens": t, "best": b, "mean": b} for t, b in ((10, 5.0), (20, 4.0))]
    progress = {run: [{"forward_tokens": 10, "relative": 1.0}, {"forward_tokens": 20, "relative": r}]
                for run, r in (("s0", 0.9), ("s1", 0.8), ("kl", 0.95))}
    groups = {"published": "published", "s0": "race (2 seeds)", "s1": "race (2 seeds)", "kl": "kl"}
    fixed, races = plots.convergence({"published": history, **{r: history for r in progress}}, progress, groups).axes
    assert [line.get_label() for line in fixed.get_lines()] == ["published: best", "published: mean"]
    lines = {line.get_label(): line for line in races.get_lines() if line.get_label() in progress}
    assert list(lines["s1"].get_ydata()) == [1.0, 0.8]
    assert lines["s0"].get_color() == lines["s1"].get_color() != lines["kl"].get_color()
    assert lines["s0"].get_linestyle() != lines["s1"].get_linestyle()


def test_figure1_sets_each_search_beside_uniform_at_its_sparsity():
    uniform = [{"sparsity": s, "test_ppl": 10 + 1000 * s ** 3, "study_ppl": 11 + 1000 * s ** 3}
               for s in (0.0, 0.45, 0.9)]
    groups = {"race": [{"block_sparsity": 0.45, "test_ppl": 80.0, "study_ppl": 90.0}],
              "published": [{"block_sparsity": 0.49, "test_ppl": 300.0, "study_ppl": 310.0}]}
    side = plots.figure1(uniform, groups).axes[1]
    bars = [line for line in side.get_lines() if line.get_color() == "tab:blue"]
    assert len(bars) == 1 and bars[0].get_ydata()[0] == pytest.approx(10 + 1000 * 0.45 ** 3)  # none at 49%
    assert side.get_ylim()[0] < 80 and side.get_ylim()[1] > 310


def _point(target: float, ppl: float, method: str) -> dict:
    return {"target": target, "sparsity": target, "ppl": ppl, "low": ppl, "high": ppl, "method": method}


def test_frontier_names_one_best_rule_in_the_legend_and_changing_ones_at_their_points():
    lines = {"wanda": {"best rule": [_point(0.5, 50.0, "sensitivity"), _point(0.7, 300.0, "sensitivity")],
                       "race": [_point(0.5, 48.0, "race"), _point(0.7, 250.0, "race")]},
             "sparsegpt": {"best rule": [_point(0.5, 45.0, "AlphaPruning"), _point(0.7, 200.0, "sensitivity")],
                           "race": []}}
    ax = plots.frontier(lines, DENSE, "m").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "wanda, best rule (sensitivity)", "wanda, race", "sparsegpt, best rule", "dense (20.0)"]
    assert [t.get_text() for t in ax.texts] == ["AlphaPruning", "sensitivity"]  # only where the rule changes
