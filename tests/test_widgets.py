"""The pruning panel, driven without a browser: set slider values, click buttons, read labels (tiny-gpt2)."""
import time

import pytest
import torch

from evoprune import perplexity
from evoprune.cli import parse_rates
from evoprune.records import report_paths, study_published, write_json
from evoprune.widgets import CUSTOM, Debouncer, PrunePanel, default_presets


@pytest.fixture
def calibration():
    return torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def panel(tiny, calibration, tmp_path):
    """A panel opened on the dense model (every rate 0)."""
    return PrunePanel(tiny.model, calibration, debounce_s=0, export_path=tmp_path / "genome.json",
                      initial=[0.0] * 12)


def test_one_slider_per_block(panel):
    assert len(panel.sliders) == 12
    assert all(s.min == 0 and s.max == pytest.approx(0.9) for s in panel.sliders)
    assert [s.description for s in panel.sliders] == [f"block {i}" for i in range(12)]
    assert panel.genome == [0.0] * 12 and panel.preset_dropdown.value == CUSTOM


def test_opens_uniform_at_the_target(tiny, calibration):
    panel = PrunePanel(tiny.model, calibration, target=0.3, debounce_s=0)
    assert panel.genome == pytest.approx([0.3] * 12) and panel.preset_dropdown.value == "uniform 30%"
    assert panel.pruner.genome == pytest.approx(panel.genome)  # the perplexity shown is the uniform model's
    assert "block sparsity 30.00%" in panel.sparsity_label.value


def test_opens_at_a_named_preset(tiny, calibration):
    ga = [0.3 + 0.02 * i for i in range(12)]
    panel = PrunePanel(tiny.model, calibration, presets={"GA best (default)": ga}, debounce_s=0,
                       initial="GA best (default)")
    assert panel.genome == pytest.approx(ga) and panel.preset_dropdown.value == "GA best (default)"
    with pytest.raises(ValueError, match="no preset 'GA best'"):
        PrunePanel(tiny.model, calibration, presets={"GA best (default)": ga}, initial="GA best")
    with pytest.raises(ValueError, match="3 rates"):
        PrunePanel(tiny.model, calibration, initial=[0.1, 0.2, 0.3])


def test_chart_axis_says_block(panel):
    assert panel._figure.axes[0].get_xlabel() == "block"


def test_sparsity_labels_follow_the_sliders(panel):
    assert "block sparsity 0.00%" in panel.sparsity_label.value
    panel.sliders[0].value = 0.9  # blocks of tiny-gpt2 have equal sizes: 0.9 / 12 = 7.5%
    assert "block sparsity 7.50%" in panel.sparsity_label.value
    assert f"whole-model sparsity {0.075 * panel.params_ratio:.2%}" in panel.sparsity_label.value
    assert 0 < panel.model_sparsity() < panel.block_sparsity()


def test_rescale_hits_the_target_and_keeps_the_differences(panel):
    start = [0.1 + 0.02 * i for i in range(12)]
    for slider, g in zip(panel.sliders, start):
        slider.value = g
    panel.target.value = 0.45
    panel.rescale_button.click()
    assert panel.block_sparsity() == pytest.approx(0.45, abs=1e-6)
    assert "block sparsity 45.00%" in panel.sparsity_label.value
    shifts = [g - s for g, s in zip(panel.genome, start)]
    assert max(shifts) == pytest.approx(min(shifts))


def test_rescale_clips_at_the_maximum_rate(panel):
    panel.set_genome([0.9] + [0.1] * 11)
    panel.target.value = 0.8
    panel.rescale_button.click()
    assert max(panel.genome) == pytest.approx(0.9) and panel.block_sparsity() == pytest.approx(0.8, abs=1e-6)


def test_perplexity_label_updates_and_matches_a_direct_measurement(panel, tiny, calibration):
    dense_label = panel.ppl_label.value
    assert "(2 calibration windows)" in dense_label and not panel.busy
    panel.sliders[3].value = 0.8
    assert panel.ppl_label.value != dense_label
    expected = perplexity.primary(tiny.model, calibration, dtype=panel.dtype).ppl  # the model is pruned now
    assert f"{expected:.2f}" in panel.ppl_label.value
    assert panel.status_label.value == ""


def test_chart_follows_the_sliders(panel):
    before = bytes(panel.chart.value)
    assert before.startswith(b"\x89PNG")
    panel.sliders[5].value = 0.6
    assert bytes(panel.chart.value) != before
    assert panel._bars[5].get_height() == pytest.approx(60)


def test_export_round_trips_through_parse_rates(panel, tmp_path):
    for i, slider in enumerate(panel.sliders):
        slider.value = 0.05 * (i % 7)
    panel.export_button.click()
    assert parse_rates(str(tmp_path / "genome.json")) == pytest.approx(panel.genome)
    assert "exported" in panel.status_label.value


def test_presets_set_the_sliders(tiny, calibration, tmp_path):
    paths = report_paths("t", tmp_path)
    ga = [0.3 + 0.02 * i for i in range(12)]
    write_json(paths.search("default") / "result.json", {"genome": ga})
    write_json(paths.search("group") / "result.json", {"genome": ga * 2})  # attention and MLP genes: not these
    write_json(paths.search("removal") / "result.json", {"removed": [3, 7]})  # whole blocks: no rates
    presets = default_presets(12, 0.45, paths)
    assert list(presets) == ["uniform 45%", "GA best (default)", "the study's published GA (GPT-2)"]
    panel = PrunePanel(tiny.model, calibration, presets=presets, debounce_s=0)
    panel.preset_dropdown.value = "the study's published GA (GPT-2)"
    assert panel.genome == pytest.approx(study_published()["ga"]["genome"])
    panel.preset_dropdown.value = "GA best (default)"
    assert panel.genome == pytest.approx(ga)
    panel.sliders[0].value = 0.0  # a hand edit is no preset any more
    assert panel.preset_dropdown.value == CUSTOM


def test_one_calibration_window_is_singular(tiny, calibration):
    panel = PrunePanel(tiny.model, calibration[:1], debounce_s=0)
    assert "(1 calibration window)" in panel.ppl_label.value


def test_study_preset_needs_twelve_genes():
    assert list(default_presets(30, 0.5)) == ["uniform 50%"]


def test_debounce_coalesces_triggers():
    calls = []
    immediate = Debouncer(0, lambda: calls.append("now"))
    immediate()
    assert calls == ["now"]
    delayed = Debouncer(0.05, lambda: calls.append("later"))
    for _ in range(5):
        delayed()
    assert calls == ["now"]
    time.sleep(0.3)
    assert calls == ["now", "later"]


def test_debounced_panel_measures_in_the_background(tiny, calibration):
    panel = PrunePanel(tiny.model, calibration, debounce_s=2.0)  # long enough that a loaded CI machine reaches
    panel.sliders[0].value = 0.9                                  # the next line first (0.2 s did not once)
    assert panel.pruner.genome[0] == 0.0  # nothing measured yet: the change only scheduled a measurement
    deadline = time.time() + 30
    while (panel.busy or panel.pruner.genome != panel.genome) and time.time() < deadline:
        time.sleep(0.05)
    assert panel.pruner.genome == pytest.approx(panel.genome)
    assert "calibration windows" in panel.ppl_label.value


def test_sliders_are_grouped_by_block_in_collapsible_sections(calibration):
    """A SmolLM2-sized genome (30 blocks, attention and MLP genes): sections of ten blocks, each block's two
    sliders side by side; moving an MLP slider moves the sparsity."""
    from evoprune.models import tiny_gpt2
    from evoprune.pruning import Pruner
    model = tiny_gpt2(n_layer=30, n_embd=32, n_head=2).model
    panel = PrunePanel(model, calibration, Pruner(model, genes_per_block=2), debounce_s=0, initial=[0.0] * 60)
    sections = panel.blocks
    assert sections.titles == ("blocks 0-9", "blocks 10-19", "blocks 20-29") and sections.selected_index == 0
    rows = [row for section in sections.children for row in section.children]
    assert [[s.description for s in row.children] for row in rows] == [[f"{b}.attn", f"{b}.mlp"] for b in range(30)]
    assert panel.blocks in panel.widget.children
    mlp = rows[17].children[1]
    mlp.value = 0.9
    assert panel.genome[35] == 0.9 and panel.block_sparsity() > 0


def test_a_gpt2_sized_model_shows_its_blocks_in_one_section(panel):
    assert panel.blocks.titles == ("blocks 0-11",)
    rows = panel.blocks.children[0].children
    assert [row.children[0].description for row in rows] == [f"block {i}" for i in range(12)]


def test_a_sparsegpt_panel_moves_by_levels_and_rescales_onto_one(tiny, calibration, tmp_path):
    from evoprune.levels import LevelPruner, build
    pruner = LevelPruner(tiny.model, build(tiny.model, calibration, (0.0, 0.25, 0.5, 0.75), tmp_path,
                                           blocksize=32, progress=False))
    panel = PrunePanel(tiny.model, calibration, pruner, target=0.45, debounce_s=0)
    assert panel.sliders[0].step == 0.25 and panel.genome == [0.5] * 12  # 0.45 opens at the nearest level
    panel.set_genome([0.3 * (i % 3) for i in range(12)])
    assert set(panel.genome) <= {0.0, 0.25, 0.5, 0.75}
    panel.target.value = 0.5
    panel.rescale_button.click()
    assert set(panel.genome) <= {0.0, 0.25, 0.5, 0.75} and panel.block_sparsity() == pytest.approx(0.5)
    assert "perplexity (2 calibration windows)" in panel.ppl_label.value and panel.status_label.value == ""
