"""Figures 2 and 3, built from small records: what each panel shows, not how it looks."""
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from evoprune import plots

DENSE = 20.0
ROWS = [{"criterion": c, "method": m, "block_sparsity": s, "test_ppl": DENSE * f * (1 + s)}
        for c, f in (("magnitude", 4.0), ("wanda", 1.5)) for m in ("uniform", "OWL", "GA") for s in (0.45, 0.6, 0.7)]
REMOVAL = [{"removed": [5], "share": 1 / 30, "test_ppl": 26.0, "over_dense": 26.0 / DENSE},
           {"removed": [1, 2, 3, 4, 6, 9], "share": 0.2, "test_ppl": 165.0, "over_dense": 165.0 / DENSE}]


def data_lines(ax):
    return [line for line in ax.get_lines() if line.get_label() != "dense"]


def test_methods_has_a_panel_per_criterion_and_one_for_block_removal():
    axes = plots.methods(ROWS, REMOVAL, DENSE, "m").axes
    assert [ax.get_title() for ax in axes] == ["magnitude criterion", "wanda criterion", "whole blocks removed"]
    for ax in axes[:2]:
        lines = data_lines(ax)
        assert [line.get_label() for line in lines] == ["uniform", "OWL", "GA"]
        assert len({to_hex(line.get_color()) for line in lines}) == 3  # one colour per method


def test_methods_shows_perplexity_relative_to_dense_on_a_log_axis():
    axes = plots.methods(ROWS, REMOVAL, DENSE).axes
    assert axes[0].get_yscale() == "log" and "dense" in axes[0].get_ylabel()
    uniform_wanda = data_lines(axes[1])[0]
    assert list(uniform_wanda.get_ydata()) == pytest.approx([1.5 * 1.45, 1.5 * 1.6, 1.5 * 1.7])
    assert sorted(line.get_ydata()[0] for line in data_lines(axes[2])) == pytest.approx([26 / DENSE, 165 / DENSE])
    assert all(ax.get_lines()[-1].get_ydata()[0] == 1.0 for ax in axes)  # the dense level


def test_methods_x_axes_span_their_data():
    axes = plots.methods(ROWS, REMOVAL, DENSE).axes
    for ax in axes[:2]:
        low, high = ax.get_xlim()
        assert 40 < low < 45 and 70 < high < 75
    assert axes[2].get_xlim()[1] < 25


def test_methods_without_removal_points():
    assert len(plots.methods(ROWS, [], DENSE).axes) == 2


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
