"""An ipywidgets panel for exploring layer-wise pruning profiles by hand.

One slider per gene, grouped by block in collapsible sections, live sparsity labels, a bar chart of the profile, "rescale to target", presets, export of
the genome as ``{"genome": [...]}`` (what ``python -m evoprune eval --rates file.json`` reads), and live
perplexity on a small calibration slice, debounced so dragging a slider does not queue one evaluation per step.
Everything runs without a browser: set a slider's ``.value`` or call a button's ``.click()``.
"""
from __future__ import annotations

import io
import threading
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import ipywidgets as w
import torch
from matplotlib.figure import Figure

from evoprune import EvopruneError, perplexity
from evoprune.hardware import resolve_dtype
from evoprune.grid import snap_to_grid
from evoprune.genes import GENES
from evoprune.pruning import Pruner, build_pruner, layout_genes
from evoprune.strategies import project
from evoprune.records import read_json, ReportPaths, study_published, write_json

CUSTOM = "(custom)"
MAX_SECTION_BLOCKS = 12  # a model of up to this many blocks (GPT-2) shows them in one section
SECTION_BLOCKS = 10      # else: sections of this many blocks (SmolLM2: 0-9, 10-19, 20-29)


def default_presets(n_genes: int, target: float, paths: ReportPaths | None = None) -> dict[str, list[float]]:
    """Uniform at the target, the best genome of each finished search under ``paths``, and the study's
    published genome when the model has as many genes as GPT-2 has blocks."""
    presets = {f"uniform {target:.0%}": [target] * n_genes}
    if paths is not None:
        for result in sorted(paths.reports.glob("search/*/result.json")):
            genome = read_json(result).get("genome")  # a block-removal search has none
            if genome is not None and len(genome) == n_genes:
                presets[f"GA best ({result.parent.name})"] = genome
    study = study_published()["ga"]["genome"]
    if len(study) == n_genes:
        presets["the study's published GA (GPT-2)"] = study
    return presets


class Debouncer:
    """Calls ``fn`` once ``delay_s`` after the last trigger; a delay of 0 calls it at once, in the caller's
    thread (what tests use)."""

    def __init__(self, delay_s: float, fn: Callable[[], None]):
        self.delay_s, self.fn = delay_s, fn
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if self.delay_s <= 0:
            self.fn()
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.delay_s, self.fn)
            self._timer.daemon = True
            self._timer.start()


class PrunePanel:
    """Sliders over a pruner's genes, with live labels, chart and calibration perplexity.

    ``windows`` is a (n, seq_len) tensor of calibration token ids (keep it small: it is scored on every change).
    The panel prunes ``model`` in place through ``pruner``; give it a model of its own. It opens at ``initial``: a
    genome, the name of one of ``presets`` (e.g. ``"GA best (default)"``), or None for uniform at ``target``.
    """

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, pruner: Pruner | None = None,
                 presets: dict[str, list[float]] | None = None, target: float = 0.45, g_max: float = 0.9,
                 debounce_s: float = 0.5, dtype: str = "auto", batch_size: int = 4,
                 export_path: str | Path = "genome.json", criterion: str = "magnitude",
                 initial: str | list[float] | None = None):
        self.model, self.windows = model, windows
        self.pruner = pruner or build_pruner(model, criterion)
        self.grid = getattr(self.pruner, "grid", None)  # SparseGPT's level database: sliders move by its levels
        step = self.grid[1] if self.grid else None
        g_max = min(g_max, self.grid[-1]) if self.grid else g_max
        self.dtype, self.batch_size = perplexity.get_dtype(resolve_dtype(dtype)), batch_size
        self.sizes = self.pruner.gene_sizes()
        self.params_ratio = sum(self.sizes) / sum(p.numel() for p in model.parameters())
        self.presets = presets if presets is not None else default_presets(self.pruner.n_genes, target)
        self.g_max = g_max
        self._quiet_depth = 0
        self._eval_lock = threading.Lock()
        start = self._initial_genome(initial, target)

        self.sliders = [w.FloatSlider(value=g, min=0.0, max=g_max, step=step or 0.001, readout_format=".3f",
                                      description=name, continuous_update=False)
                        for name, g in zip(self.pruner.gene_names(), start)]
        self.target = w.FloatSlider(value=target, min=0.0, max=g_max, step=step or 0.005, description="target",
                                    readout_format=".3f")
        self.rescale_button = w.Button(description="rescale to target", icon="compress")
        opened_at = next((name for name, genome in self.presets.items() if genome == start), CUSTOM)
        self.preset_dropdown = w.Dropdown(options=[CUSTOM, *self.presets], value=opened_at, description="preset")
        self.export_path = w.Text(value=str(export_path), description="export to")
        self.export_button = w.Button(description="export genome", icon="download")
        self.sparsity_label = w.Label()
        self.ppl_label = w.Label(value="perplexity: not measured yet")
        self.status_label = w.Label()
        self.chart = w.Image(format="png")
        self._figure, self._bars, self._target_line = self._build_chart()

        for slider in self.sliders:
            slider.observe(self._on_slider, names="value")
        self.target.observe(lambda _: self._refresh_view(), names="value")
        self.preset_dropdown.observe(self._on_preset, names="value")
        self.rescale_button.on_click(lambda _: self.rescale())
        self.export_button.on_click(lambda _: self.export())
        self._schedule_perplexity = Debouncer(debounce_s, self.update_perplexity)
        self._on_genome_change()

    # --- state ---------------------------------------------------------------------------------------------

    @property
    def genome(self) -> list[float]:
        return [float(s.value) for s in self.sliders]

    @property
    def busy(self) -> bool:
        return self._eval_lock.locked()

    def block_sparsity(self) -> float:
        return self.pruner.target_sparsity(self.genome)

    def model_sparsity(self) -> float:
        return self.block_sparsity() * self.params_ratio

    @contextmanager
    def _quiet(self):
        """Change several widgets without each change triggering an update."""
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def _initial_genome(self, initial: str | list[float] | None, target: float) -> list[float]:
        if initial is None:
            return [self._settable(target)] * self.pruner.n_genes
        if isinstance(initial, str):
            if initial not in self.presets:
                raise ValueError(f"no preset {initial!r}; presets: {', '.join(self.presets)}")
            initial = self.presets[initial]
        if len(initial) != self.pruner.n_genes:
            raise ValueError(f"initial genome has {len(initial)} rates, the model has {self.pruner.n_genes} genes")
        return [self._settable(g) for g in initial]

    def _settable(self, rate: float) -> float:
        """A rate as a slider holds it: within [0, g_max], and on a level grid the nearest level."""
        rate = min(max(float(rate), 0.0), self.g_max)
        return round(rate / self.grid[1]) * self.grid[1] if self.grid else rate

    def set_genome(self, genome: list[float]) -> None:
        if len(genome) != len(self.sliders):
            raise ValueError(f"genome has {len(genome)} rates, the panel has {len(self.sliders)} sliders")
        with self._quiet():
            for slider, g in zip(self.sliders, genome):
                slider.value = self._settable(g)
        self._on_genome_change()

    # --- actions -------------------------------------------------------------------------------------------

    def rescale(self) -> None:
        """Shift every rate by the same amount, clipped to [0, g_max], so the weighted mean hits the target (the
        search's projection: the differences between blocks are kept where no rate is clipped)."""
        if self.grid:  # on a level grid: the nearest levels whose weighted mean is the target (a level too)
            self.set_genome(snap_to_grid(self.genome, self.sizes, self.target.value, self.grid))
        else:
            self.set_genome(project(self.genome, self.sizes, self.target.value, self.g_max).tolist())
        self._mark_custom()

    def export(self, path: str | Path | None = None) -> Path:
        written = write_json(path or self.export_path.value, {"genome": self.genome})
        self.status_label.value = f"exported to {written}"
        return written

    def update_perplexity(self) -> None:
        """Score the calibration windows at the current genome; if the sliders moved meanwhile, score again."""
        with self._eval_lock:
            self.status_label.value = "computing perplexity..."
            try:
                while True:
                    genome = self.genome
                    self.pruner.apply(genome)
                    ppl = perplexity.primary(self.model, self.windows, self.batch_size, self.dtype).ppl
                    if genome == self.genome:
                        break
            except Exception as err:  # in a timer thread nobody sees the traceback: show it on the panel
                self.status_label.value = f"perplexity failed: {err}"
                raise
            n = len(self.windows)
            self.ppl_label.value = f"perplexity ({n} calibration window{'' if n == 1 else 's'}): {ppl:.2f}"
            self.status_label.value = ""

    # --- widget callbacks ----------------------------------------------------------------------------------

    def _on_slider(self, _change) -> None:
        if self._quiet_depth == 0:
            self._mark_custom()
            self._on_genome_change()

    def _on_preset(self, change) -> None:
        if self._quiet_depth == 0 and change["new"] != CUSTOM:
            self.set_genome(self.presets[change["new"]])

    def _mark_custom(self) -> None:
        with self._quiet():
            self.preset_dropdown.value = CUSTOM

    def _on_genome_change(self) -> None:
        self._refresh_view()
        self._schedule_perplexity()

    def _refresh_view(self) -> None:
        self.sparsity_label.value = (f"block sparsity {self.block_sparsity():.2%} (target {self.target.value:.2%})"
                                     f" | whole-model sparsity {self.model_sparsity():.2%}")
        for bar, g in zip(self._bars, self.genome):
            bar.set_height(g * 100)
        self._target_line.set_ydata([self.target.value * 100] * 2)
        buf = io.BytesIO()
        self._figure.savefig(buf, format="png", dpi=80)
        self.chart.value = buf.getvalue()

    # --- layout --------------------------------------------------------------------------------------------

    def _build_chart(self):
        fig = Figure(figsize=(6, 2.6), layout="constrained")
        ax = fig.add_subplot()
        bars = ax.bar(range(len(self.sliders)), [0.0] * len(self.sliders), color="tab:blue")
        line = ax.axhline(0.0, color="tab:red", ls=":", label="target")
        xlabel = {1: "block", 2: "gene (attention, MLP of each block)"}.get(self.pruner.genes_per_block,
                                                                           "gene (each matrix of each block)")
        ax.set(ylim=(0, self.g_max * 100), xlabel=xlabel, ylabel="pruning rate (%)")
        ax.legend(loc="upper left", fontsize=7)
        return fig, bars, line

    @cached_property
    def blocks(self) -> w.Accordion:
        """The sliders by block, in collapsible sections of blocks (the first one open): a block's attention and
        MLP sliders (or its matrices' sliders, wrapped to the output's width) side by side on one row, or with one
        gene a block, two blocks a row (three overflow a notebook's output area)."""
        per_block = self.pruner.genes_per_block
        wrap = w.Layout(flex_flow="row wrap")
        rows = [w.HBox(self.sliders[b * per_block:(b + 1) * per_block], layout=wrap)
                for b in range(self.pruner.n_blocks)]
        span = len(rows) if len(rows) <= MAX_SECTION_BLOCKS else SECTION_BLOCKS
        columns = w.Layout(grid_template_columns=f"repeat({2 if per_block == 1 else 1}, max-content)")
        sections = [w.GridBox(rows[start:start + span], layout=columns) for start in range(0, len(rows), span)]
        titles = [f"blocks {start}-{min(start + span, len(rows)) - 1}" for start in range(0, len(rows), span)]
        return w.Accordion(children=sections, titles=titles, selected_index=0)

    @cached_property
    def widget(self) -> w.Widget:
        controls = w.HBox([self.target, self.rescale_button, self.preset_dropdown])
        export = w.HBox([self.export_path, self.export_button])
        return w.VBox([controls, self.blocks, self.sparsity_label, self.ppl_label, self.status_label, self.chart,
                       export])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def open_panel(model: str, data: str, paths: ReportPaths, target: float = 0.45, n_windows: int = 2,
               seq_len: int = 256, dtype: str = "auto", debounce_s: float = 0.5,
               initial: str | list[float] | None = None, genes: str = "block",
               criterion: str = "magnitude") -> PrunePanel:
    """A panel on a fresh copy of ``model``, scored on the first validation windows, with the presets of the
    profile's reports and export to ``reports/<profile>/panel_genome.json``. It opens uniform at ``target``, or
    at ``initial``: a genome or a preset's name, e.g. ``"GA best (default)"``. ``genes``: one slider per block,
    (``group``) an attention and an MLP slider per block, or (``matrix``) one per matrix; the presets are the searches with those genes.
    ``criterion``: any registered one (SparseGPT's sliders move by its database's levels)."""
    from evoprune.session import Session
    if genes not in GENES:
        raise EvopruneError(f"genes={genes!r}: use one of {', '.join(GENES)}.")
    session, dtype = Session(model, data), resolve_dtype(dtype)
    windows = perplexity.windows(session.tokens("validation").ids, seq_len, n_windows)
    pruner = session.pruner(criterion, layout_genes(genes, session.model), dtype)
    return PrunePanel(pruner.model, windows, pruner, default_presets(pruner.n_genes, target, paths), target,
                      debounce_s=debounce_s, dtype=dtype, export_path=paths.reports / "panel_genome.json",
                      initial=initial)
