"""`make bench`: speed and memory figures on SmolLM2-135M, printed; the last line is one JSON object, also written
to reports/bench.json.

Every figure is a ratio of two times measured in this run (so it carries over to a busy or a different machine),
printed beside the CPU capability and the dtype ``auto`` chose here; absolute times stay with the machine that
measured them. Nothing is asserted: targets are read against the printed values. Search-cost figures come from the
last committed offline run (reports/offline/).
"""
from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from evoprune import hardware, perplexity
from evoprune.provenance import provenance
from evoprune.records import read_json, ROOT, SearchRecord, write_json
from evoprune.objective import build_objective, fresh_windows, split_settings
from evoprune.search import optimize, race_parents
from evoprune.session import Session
from evoprune.timing import timings

SEQ_LEN, N_WINDOWS = 1024, 4
OFFLINE = ROOT / "reports" / "offline"
DTYPES = ("float32", "bfloat16")
TARGETS = {"fitness_peak_fraction": ">= 0.7", "auto_over_best": "<= 1.05", "prefix_reuse_ratio": "<= 0.8",
           "offline_overhead_ratio": "<= 1.15", "peak_rss_gib": "<= 3", "apply_over_eval": "<= 0.05",
           "bf16_ppl_rel_error": "<= 0.005", "search_token_ratio": "<= 0.05",
           "compressed_export_ratio_70": "<= 0.6", "sparsegpt_apply_over_eval": "<= 0.05",
           "sparsegpt_peak_rss_gib": "<= 6"}
SPARSEGPT = {"build_over_forward": "sparsegpt_build_over_forward", "database_gib": "sparsegpt_database_gib",
             "race_child_apply_over_eval": "sparsegpt_apply_over_eval",
             "apply_over_eval": "sparsegpt_full_apply_over_eval", "search_peak_rss_gib": "sparsegpt_peak_rss_gib"}
RACE = {"strategy": "race", "target": 0.45, "offspring": 8, "generations": 3, "stages": 2}  # prefix-reuse search


def best_of(fn, repeats: int = 3) -> float:
    return min(timings(fn, repeats))


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n ** 3 / best_of(lambda: a @ b) / 1e9)
    return best


def peak_and_fitness_rounds(evaluate, dtype: torch.dtype, rounds: int = 3) -> list[tuple[float, float]]:
    """(seconds of one ``evaluate`` call, the matmul peak measured just before it) per round, after a warm-up call.
    This VM's speed drifts within a run (the bf16 peak read 417 and 316 GFLOP/s in two runs while the evaluation
    took 5.25 and 5.17 s): a ratio of two figures taken side by side drifts less than one of figures taken apart."""
    evaluate()
    pairs = []
    for _ in range(rounds):
        peak = matmul_peak_gflops(dtype)
        start = time.perf_counter()
        evaluate()
        pairs.append((time.perf_counter() - start, peak))
    return pairs


def attention_flops(config, n_windows: int, seq_len: int) -> int:
    """Causal attention's two matmuls per window and layer, which the weights' count leaves out: the i-th query
    meets i keys in the scores and i values in their weighted sum, 2 x width FLOPs each."""
    width = config.num_attention_heads * (getattr(config, "head_dim", None)
                                          or config.hidden_size // config.num_attention_heads)
    return n_windows * config.num_hidden_layers * 2 * 2 * width * seq_len * (seq_len + 1) // 2


def evaluation_figures(session: Session, chosen: str) -> dict:
    """Per dtype: a fitness evaluation (apply a new genome, then score 4 x 1024 tokens) against a plain Hugging Face
    forward of the same model and tokens, and against the dtype's matmul peak; bf16's perplexity error."""
    wins = perplexity.windows(session.tokens("validation").ids, SEQ_LEN, N_WINDOWS)
    gen = torch.Generator().manual_seed(0)
    genomes = [(0.3 + 0.3 * torch.rand(session.n_blocks, generator=gen)).tolist() for _ in range(6)]
    flops = 2 * sum(p.numel() for p in session.model.parameters()) * wins.numel() + attention_flops(
        session.model.config, *wins.shape)
    figures = {}
    for dtype in DTYPES:
        pruner, torch_dtype = session.pruner("magnitude", 1, dtype), perplexity.get_dtype(dtype)
        alternate = itertools.cycle(genomes)  # each call applies a genome that differs from the last one
        pairs = peak_and_fitness_rounds(lambda: (pruner.apply(next(alternate)), perplexity.primary(
            pruner.model, wins, dtype=torch_dtype)), torch_dtype)
        figures[f"fitness_s_{dtype}"] = min(seconds for seconds, _ in pairs)
        figures[f"matmul_peak_gflops_{dtype}"] = statistics.median(peak for _, peak in pairs)
        figures[f"peak_fraction_{dtype}"] = statistics.median(flops / seconds / 1e9 / peak for seconds, peak in pairs)
        with torch.inference_mode(), perplexity.autocast(pruner.model, torch_dtype):
            figures[f"plain_forward_s_{dtype}"] = best_of(lambda: pruner.model(wins), 2)
        pruner.restore()
    pruner = session.pruner()
    pruner.apply(genomes[0])
    start = time.perf_counter()
    for g in genomes[1:]:
        pruner.apply(g)
    apply_s = (time.perf_counter() - start) / (len(genomes) - 1)
    errors = {}
    for rate in (0.0, 0.45):  # bf16 error grows with sparsity: measured dense and at the study's target
        exact = perplexity.primary(session.apply(rate).model, wins).ppl
        fast = perplexity.primary(session.apply(rate, dtype="bfloat16").model, wins, dtype=torch.bfloat16).ppl
        errors[rate] = abs(fast - exact) / exact
    session.restore()
    fitness = {dtype: figures[f"fitness_s_{dtype}"] for dtype in DTYPES}
    return {**figures, "chosen_dtype": chosen, "flops_per_eval": flops, "apply_s": apply_s,
            "fitness_peak_fraction": figures[f"peak_fraction_{chosen}"],
            "auto_over_best": fitness[chosen] / min(fitness.values()),
            "overhead_ratio": fitness[chosen] / figures[f"plain_forward_s_{chosen}"],
            "apply_over_eval": apply_s / fitness[chosen],
            **{f"tokens_per_s_plain_{d}": wins.numel() / figures[f"plain_forward_s_{d}"] for d in DTYPES},
            "bf16_ppl_rel_error": max(errors.values()), "bf16_ppl_rel_error_dense": errors[0.0],
            "bf16_ppl_rel_error_45": errors[0.45]}


def prefix_reuse_figures(session: Session, chosen: str) -> dict:
    """The same short race search with and without prefix reuse, twice each in alternation (the best of two
    against the best of two: a drifting machine hits both alike): wall time ratio, the share of block forwards
    the reusing runs skipped, and whether all four results agree."""
    settings, spec = split_settings({**RACE, "model": session.name, "dtype": chosen})
    rules = {"sensitivity": [0.45 + 0.1 * (b / (session.n_blocks - 1) - 0.5) for b in range(session.n_blocks)]}
    runs, skipped = {False: [], True: []}, []
    for reuse in (False, True, False, True):
        objective = build_objective(session, spec, reuse=reuse)
        start = time.perf_counter()
        search = optimize(objective, objective.pruner.gene_sizes(), settings, rules=rules)
        runs[reuse].append((time.perf_counter() - start, search.best_genome, [h["best"] for h in search.history]))
        if reuse:
            skipped.append(objective.hidden.__self__.saved_fraction)
    session.restore()
    plain, reused = (min(seconds for seconds, _, _ in runs[r]) for r in (False, True))
    results = [(genome, best) for r in (False, True) for _, genome, best in runs[r]]
    return {"prefix_reuse_ratio": reused / plain, "prefix_search_s": reused, "plain_search_s": plain,
            "prefix_same_result": all(r == results[0] for r in results), "prefix_blocks_skipped": skipped[0],
            "prefix_search": RACE}


def search_cost_figures(session: Session, published_run: str = "published", race_run: str = "race-s0") -> dict:
    """From the committed offline run: the forward tokens its race search needed before its parent scored at most
    what the published GA's final genome scores on the same fresh sample (a paired comparison, the race's own
    rule), over the tokens the published GA spent."""
    published = SearchRecord.read(OFFLINE / "search" / published_run / "result.json")
    checkpoint = read_json(OFFLINE / "search" / race_run / "checkpoint.json")
    config = checkpoint["config"]
    pruner = session.apply(published.genome, dtype=config["dtype"])
    ids, reached = session.tokens(config["fitness_split"]).ids, None
    for row in race_parents(checkpoint):
        wins = fresh_windows(ids, config["seq_len"], row["sample"][1], row["sample"][0])
        if row["after"] <= perplexity.primary(pruner.model, wins, dtype=perplexity.get_dtype(config["dtype"])).ppl:
            reached = row["forward_tokens"]
            break
    session.restore()
    spent = published.spent.forward_tokens
    return {"published_forward_tokens": spent, "race_tokens_to_reach_published": reached,
            "search_token_ratio": reached / spent if reached else None}


def offline_overhead(figures: dict) -> dict:
    """The committed offline run's wall time over the time its forward tokens would take at this run's plain forward
    throughput, dtype by dtype (None where the run predates per-notebook token counts)."""
    path = OFFLINE / "timings.json"
    notebooks = read_json(path) if path.exists() else {}
    if not notebooks or any("forward_tokens" not in t for stem, t in notebooks.items() if stem != "04_analysis"):
        return {"offline_overhead_ratio": None, "offline_tokens": None}
    tokens: dict[str, int] = {}
    for t in notebooks.values():
        for dtype, n in t.get("forward_tokens", {}).items():
            tokens[dtype] = tokens.get(dtype, 0) + n
    wall = sum(t["wall_s"] for t in notebooks.values())
    expected = sum(n / figures[f"tokens_per_s_plain_{dtype}"] for dtype, n in tokens.items())
    return {"offline_overhead_ratio": wall / expected, "offline_tokens": tokens, "offline_wall_s": wall}


def child_json(*argv: str) -> dict:
    """Run a command of this environment and read the JSON object its last line prints."""
    done = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_peak_rss_gib(data: str, *options: str, model: str = "smollm2-135m", target: float = 0.45) -> float:
    """Peak resident memory of a short race search (prefix reuse on, stages of 1, 2 and 4 windows; ``options``:
    more search flags, e.g. ``--criterion sparsegpt``), in a child process of its own; run before any other child,
    since the figure is the largest child's."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "evoprune", "search", "--model", model, "--data", data,
                        "--target", str(target), "--strategy", "race", "--offspring", "4", "--generations", "2",
                        "--test-windows", "1", "--no-progress", *options, "--out", out], check=True,
                       capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB -> GiB


def main() -> None:
    data = os.environ.get("EVOPRUNE_DATA_DIR")
    if not data:
        raise SystemExit("make bench needs the local WikiText copy: set EVOPRUNE_DATA_DIR (e.g. ../shared/data).")
    chosen = hardware.resolve_dtype("auto")
    figures = {"peak_rss_gib": search_peak_rss_gib(data), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads(), "dtype_decision": hardware.dtype_decision()}
    session = Session("smollm2-135m", data)
    figures.update(evaluation_figures(session, chosen))
    figures.update(prefix_reuse_figures(session, chosen))
    figures.update(offline_overhead(figures))
    if (OFFLINE / "search" / "race-s0" / "checkpoint.json").exists():
        figures.update(search_cost_figures(session))
    del session
    figures["latency"] = child_json("bench/latency.py", "--repeats", "7")
    figures["workers"] = child_json("bench/workers.py")
    figures["export_size"] = child_json("bench/export_size.py")
    at_70 = [row for row in figures["export_size"]["rows"] if row["rate"] == 0.7]
    figures["compressed_export_ratio_70"] = max(row["ratio"] for row in at_70)
    figures["compressed_export_identical"] = all(row["identical_logits"] for row in figures["export_size"]["rows"])
    figures["sparsegpt_cost"] = child_json("bench/sparsegpt_cost.py")
    figures.update({key: figures["sparsegpt_cost"][own] for own, key in SPARSEGPT.items()})

    print(f"SmolLM2-135M, {N_WINDOWS}x{SEQ_LEN} validation tokens, {figures['threads']} threads, CPU capability "
          f"{figures['cpu_capability']}; dtype auto -> {chosen}")
    for dtype in DTYPES:
        print(f"  {dtype}: fitness evaluation {figures[f'fitness_s_{dtype}']:.2f} s, plain forward "
              f"{figures[f'plain_forward_s_{dtype}']:.2f} s, matmul peak {figures[f'matmul_peak_gflops_{dtype}']:.0f} "
              f"GFLOP/s")
    latency = {row["removed"]: row["ratio"] for row in figures["latency"]["rows"]}
    print("forward time with blocks removed / whole model: "
          + ", ".join(f"{k} removed {v:.3f}" for k, v in latency.items()))
    w = figures["workers"]
    print(f"one race generation ({w['children']} children): 1 process x 2 threads {w['serial_1x2_s']:.2f} s, 2 processes x "
          f"1 thread {w['process_2x1_s']:.2f} s (gain {w['process_ratio'] - 1:.0%}; search --workers uses processes "
          f"only when asked)" + (f", 2 Ray actors {w['ray_2x1_s']:.2f} s" if "ray_2x1_s" in w else ""))
    print("compressed (sparse-bitmask) export size / dense export size, uniform magnitude: " + ", ".join(
        f"{row['rate']:.0%} {row['dtype']} {row['ratio']:.3f}" for row in figures["export_size"]["rows"])
        + f"; reloads to identical logits: {figures['compressed_export_identical']}")
    s = figures["sparsegpt_cost"]
    print(f"sparsegpt level database ({s['database_levels']} levels, {s['database_gib']:.2f} GiB): build "
          f"{s['build_s']:.0f} s = {s['build_over_forward']:.1f} dense forwards of its {s['calibration'][0]}x"
          f"{s['calibration'][1]} calibration tokens; apply / eval: a race child {s['race_child_apply_over_eval']:.4f}, "
          f"every gene moved {s['apply_over_eval']:.3f}; race search peak RSS "
          f"{s['search_peak_rss_gib']:.2f} GiB")
    for key, target in TARGETS.items():
        print(f"  {key}: {figures.get(key)}  (target {target})")
    write_json(ROOT / "reports" / "bench.json", {"figures": figures, "provenance": provenance(command="make bench")})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
