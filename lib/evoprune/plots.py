"""Figures for the notebooks. Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so
plotting works headless and leaves no global figure state; ``save_figure`` writes it as a PNG."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from evoprune import write_atomically

PROTOCOL_STYLES = {"test_ppl": ("primary protocol", "-o"), "study_ppl": ("study protocol", "--s")}
# one colour per search, in the order the runs come; a search run over several seeds is one search (one colour)
SEARCH_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:green", "tab:pink", "tab:cyan")
STUDY_COLOR = "0.45"


def _figure(width: float = 7.0, height: float = 4.2):
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def search_colors(names) -> dict[str, str]:
    """A colour per search name (``stats.seed_groups``' names), in order of first appearance."""
    names = list(dict.fromkeys(names))
    return {name: SEARCH_COLORS[i % len(SEARCH_COLORS)] for i, name in enumerate(names)}


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write a PNG atomically: a reader never sees a half-written image."""
    return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _plot_uniform(ax, rows: list[dict], label_prefix: str = "uniform") -> None:
    xs = [r["sparsity"] * 100 for r in rows]
    for key, (protocol, style) in PROTOCOL_STYLES.items():
        if all(key in r for r in rows):
            ax.plot(xs, [r[key] for r in rows], style, color="tab:blue", ms=4, label=f"{label_prefix}, {protocol}",
                    alpha=1.0 if key == "test_ppl" else 0.6)


def uniform_curve(rows: list[dict], model: str = "") -> Figure:
    """Test perplexity of uniform magnitude pruning against block sparsity: the study's cliff."""
    fig, ax = _figure()
    _plot_uniform(ax, rows)
    ax.set(yscale="log", xlabel="block sparsity (%)", ylabel="test perplexity (log)",
           title=f"Uniform magnitude pruning{f' of {model}' if model else ''}")
    ax.legend()
    return fig


def sensitivity(rows: list[dict], model: str = "") -> Figure:
    """Validation perplexity, relative to dense, with one block at a time pruned."""
    fig, ax = _figure()
    ax.bar([r["block"] for r in rows], [r["ppl_ratio"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    rate = rows[0]["rate"] * 100
    ax.set(xlabel="block pruned", ylabel="validation PPL / dense PPL",
           title=f"Per-block sensitivity at {rate:.0f}% sparsity{f' ({model})' if model else ''}")
    return fig


def convergence(histories: dict[str, list[dict]], progress: dict[str, list[dict]] | None = None,
                groups: dict[str, str] | None = None) -> Figure:
    """Left: best (solid) and population-mean (dashed) fitness against forward tokens of the searches scored on
    fixed windows. Right, for races (``progress``: ``search.race_progress``): the parent's fitness relative to
    its start, the product of paired ratios, since a race's raw fitness is each generation's fresh sample. One
    colour per search (``groups``: run -> search name; its seeds share it, one line style each)."""
    progress = progress or {}
    groups = groups or {run: run for run in histories}
    colors, styles = search_colors(groups.get(run, run) for run in histories), ("-", "--", ":", "-.")
    fixed = [run for run in histories if run not in progress]
    fig = Figure(figsize=(6.0 * (bool(fixed) + bool(progress)), 4.2), layout="constrained")
    axes = list(fig.subplots(1, bool(fixed) + bool(progress), squeeze=False)[0])
    if fixed:
        ax = axes.pop(0)
        for run in fixed:
            rows, color = histories[run], colors[groups.get(run, run)]
            tokens = [r["forward_tokens"] for r in rows]
            ax.plot(tokens, [r["best"] for r in rows], "-", color=color, label=f"{run}: best")
            ax.plot(tokens, [r["mean"] for r in rows], "--", color=color, alpha=0.6, label=f"{run}: mean")
        ax.set(yscale="log", xlabel="forward tokens", ylabel="fitness (log)", title="Searches on fixed windows")
    if progress:
        ax = axes[0]
        for run, rows in progress.items():
            group = groups.get(run, run)
            seeds = [other for other in progress if groups.get(other, other) == group]
            ax.plot([r["forward_tokens"] for r in rows], [r["relative"] for r in rows],
                    styles[seeds.index(run) % len(styles)], color=colors[group], label=run)
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set(xlabel="forward tokens", ylabel="parent's fitness (PPL or KL) / its start, paired",
               title="Races: progress on paired fresh samples")
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def layer_profile(ga_genomes: dict[str, list[float] | list[list[float]]], uniform: float | None = None,
                  study_genome: list[float] | None = None) -> Figure:
    """Pruning rate per block of each GA run (keyed by mode): one genome, or one per seed, drawn as their mean
    with a min–max band; the study's published genome when given, and ``uniform`` as a horizontal line."""
    fig, ax = _figure()
    colors = search_colors(ga_genomes)
    for mode, genomes in ga_genomes.items():
        genomes = genomes if isinstance(genomes[0], (list, tuple)) else [genomes]
        per_block = [[g * 100 for g in block] for block in zip(*genomes)]
        blocks, color = range(len(per_block)), colors[mode]
        label = f"GA {mode}" if len(genomes) == 1 else f"GA {mode}: mean of {len(genomes)} seeds, min–max band"
        ax.plot(blocks, [sum(b) / len(b) for b in per_block], "-o", ms=4, color=color, label=label)
        if len(genomes) > 1:
            ax.fill_between(blocks, [min(b) for b in per_block], [max(b) for b in per_block], color=color, alpha=0.2,
                            lw=0)
    if study_genome is not None:
        ax.plot(range(len(study_genome)), [g * 100 for g in study_genome], ":x", color=STUDY_COLOR,
                label="the study's published GA genome (GPT-2)")
    if uniform is not None:
        ax.axhline(uniform * 100, color="tab:blue", ls=":", label=f"uniform {uniform:.0%}")
    ax.set(xlabel="block", ylabel="pruning rate (%)", title="Layer-wise pruning profile")
    long_labels = max(len(label) for label in ax.get_legend_handles_labels()[1]) > 45  # two columns would not fit
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17 if long_labels else -0.13), ncol=1 if long_labels else 2,
              fontsize=8)  # below the axes: the ends matter
    return fig


def figure1(uniform_rows: list[dict], ga_groups: dict[str, list[dict]], study: dict | None = None,
            model: str = "") -> Figure:
    """Left: the uniform curve, each search as a star at the block sparsity it has (filled: primary protocol,
    hollow: study protocol; a search over several seeds at its mean, with a bar over their range) and, for
    reference, the study's published GPT-2 numbers. Right: the searches side by side, one column each (named with
    their sparsity), against uniform at the same sparsity: nothing is moved along the sparsity axis."""
    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[3, 2])
    colors = search_colors(ga_groups)
    _plot_uniform(ax, uniform_rows, f"uniform{f' ({model})' if model else ''}")
    uniform_at = {round(r["sparsity"], 4): r["test_ppl"] for r in uniform_rows}
    for column, (name, rows) in enumerate(ga_groups.items()):
        sparsity = sum(r["block_sparsity"] for r in rows) / len(rows)
        for key, fill, protocol in (("test_ppl", None, "primary"), ("study_ppl", "none", "study")):
            values = [r[key] for r in rows]
            mean = float(sum(values) / len(values))
            yerr = [[mean - min(values)], [max(values) - mean]] if len(values) > 1 else None
            style = dict(yerr=yerr, fmt="*", ms=14, mfc=fill, color=colors[name], capsize=3)
            ax.errorbar(sparsity * 100, mean, **style,
                        label=f"GA {name}, {protocol} protocol{', mean and range' if len(values) > 1 else ''}")
            side.errorbar(column + (0.12 if protocol == "study" else -0.12), mean, **style)
        same = uniform_at.get(round(sparsity, 4))
        if same is not None:  # uniform at this search's sparsity, primary protocol
            side.plot([column - 0.35, column + 0.35], [same, same], "-", color="tab:blue", lw=2)
    if study:
        label = f"the study, published ({study['model']}, its protocol)"
        points = [(0.0, study["dense_ppl"])] + [(u["sparsity"], u["ppl"]) for u in study["uniform"]]
        ax.plot([p[0] * 100 for p in points], [p[1] for p in points], ":x", color=STUDY_COLOR, label=f"{label}: uniform")
        ga = study["ga"]
        ax.plot(ga["block_sparsity"] * 100, ga["ppl"], "P", ms=10, color=STUDY_COLOR, label=f"{label}: GA")
    ax.grid(True, alpha=0.3)
    ax.set(yscale="log", xlabel="block sparsity (%)", ylabel="test perplexity (log)",
           title="Uniform vs evolutionary layer-wise pruning")
    ax.legend(fontsize=7)
    names = [f"{name}\n{sum(r['block_sparsity'] for r in rows) / len(rows):.1%}" for name, rows in ga_groups.items()]
    side.set_xticks(range(len(names)), names, fontsize=7)
    side.grid(True, axis="y", alpha=0.3)
    side.set(yscale="log", xlim=(-0.6, len(names) - 0.4))
    side.set_title("each search (filled: primary, hollow: study protocol);\nblue bar: uniform at its sparsity",
                   fontsize=9)
    return fig


def block_removal(single: list[dict], points: list[dict], dense_ppl: float, n_blocks: int,
                  model: str = "") -> Figure:
    """Figure 3: whole blocks removed. Test perplexity relative to dense (log) against the share of block weights
    removed: every single block (grey dots), the best set of each depth (black) and the removal GA's set (red),
    each labelled with its blocks."""
    fig, ax = _figure(6.0, 4.2)
    ax.plot([100 / n_blocks] * len(single), [r["test_ppl"] / dense_ppl for r in single], "o", color="0.6", ms=4,
            alpha=0.7, label="each single block")
    for r in points:
        x, y, ga = r["share"] * 100, r["over_dense"], r["chosen"] == "removal GA"
        ax.plot(x, y, "D", color="tab:red" if ga else "k", ms=6, label=r["chosen"])
        ax.annotate(", ".join(map(str, r["removed"])), (x, y), textcoords="offset points", xytext=(6, 0),
                    va="center", fontsize=7)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":", label="dense")
    ax.set(yscale="log", xlabel="block weights removed (%)", ylabel="test perplexity / dense (log)",
           title=f"Whole blocks removed{f' — {model}' if model else ''}")
    ax.margins(x=0.25)  # room for the labels
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per kind of point
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    return fig


CRITERION_COLORS = {"magnitude": "tab:blue", "wanda": "tab:orange", "sparsegpt": "tab:green"}


def frontier(lines: dict[str, dict[str, list[dict]]], dense_ppl: float, model: str = "") -> Figure:
    """Test perplexity (log) against true block sparsity, per criterion: its best rule at each target (dashed; the
    rule named in the legend, or at each point where it changes) and its race (solid; the seeds' mean, their range
    as a band). Points sit at the sparsity measured."""
    fig, ax = _figure(8.0, 4.8)
    for criterion, line in lines.items():
        color = CRITERION_COLORS.get(criterion, "tab:purple")
        for kind, style in (("best rule", "--s"), ("race", "-o")):
            points = line.get(kind) or []
            if not points:
                continue
            xs = [p["sparsity"] * 100 for p in points]
            rules = {p["method"] for p in points} if kind == "best rule" else set()
            named = f" ({min(rules)})" if len(rules) == 1 else ""  # one rule at every target: the legend names it
            ax.plot(xs, [p["ppl"] for p in points], style, color=color, ms=5, label=f"{criterion}, {kind}{named}",
                    alpha=0.65 if kind == "best rule" else 1.0)
            if kind == "race" and any(p["low"] != p["high"] for p in points):
                ax.fill_between(xs, [p["low"] for p in points], [p["high"] for p in points], color=color, alpha=0.2)
            if len(rules) > 1:  # the best rule changes with the target: each point names its own
                for x, p in zip(xs, points):
                    ax.annotate(p["method"], (x, p["ppl"]), textcoords="offset points", xytext=(4, 4), fontsize=6,
                                color=color)
    ax.axhline(dense_ppl, color="0.4", lw=0.8, ls=":", label=f"dense ({dense_ppl:.1f})")
    ax.set(yscale="log", xlabel="block sparsity (%)", ylabel="test perplexity (log)",
           title=f"Criteria x allocations{f' — {model}' if model else ''}: best rule and race (seeds' range)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def allocation_heatmap(rows: list[dict]) -> Figure:
    """The allocations side by side (seaborn): one row per race seed and best rule of each criterion and target,
    one column per block, attention and MLP in two panels sharing the colour scale (pruning rate, %)."""
    import numpy as np
    import seaborn as sns
    labels = [r["label"] for r in rows]
    n_blocks = len(rows[0]["attention"])
    fig = Figure(figsize=(4.0 + 0.22 * n_blocks * 2, 1.2 + 0.24 * len(rows)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for i, (ax, group) in enumerate(zip(axes, ("attention", "mlp"))):
        values = np.array([[rate * 100 for rate in r[group]] for r in rows])
        sns.heatmap(values, ax=ax, vmin=0, vmax=100, cmap="viridis", cbar=i == 1, yticklabels=labels,
                    xticklabels=[str(b) if b % 5 == 0 else "" for b in range(n_blocks)],
                    cbar_kws={"label": "pruning rate (%)"} if i == 1 else None)
        ax.set(xlabel="block", title={"attention": "attention", "mlp": "MLP"}[group])
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Where each criterion's race and best rule prune")
    return fig
