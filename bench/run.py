"""`make bench`: speed and memory figures on SmolLM2-135M, printed; the last line is one JSON object.

Figures are ratios measured in the same run (so they survive a busy or a different machine), raw numbers beside
them. Nothing here is asserted: targets are read against the printed values. Search-cost figures come from the
last committed offline run (reports/offline/search/), re-scored here where the two modes' fitness data differ.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from evoprune import perplexity
from evoprune.data import load_tokens
from evoprune.models import load_model, timings
from evoprune.pruning import Pruner
from evoprune.results import ROOT, provenance, read_csv, read_json, write_json

SEQ_LEN, N_WINDOWS = 1024, 4
OFFLINE = ROOT / "reports" / "offline"
TARGETS = {"apply_over_eval": "<= 0.05", "eval_peak_fraction": ">= 0.45", "overhead_ratio": "<= 1.05",
           "search_token_ratio": "<= 0.05", "peak_rss_gib": "<= 3", "offline_wall_s": "<= 2700"}


def best_of(fn, repeats: int = 3) -> float:
    return min(timings(fn, repeats))


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n ** 3 / best_of(lambda: a @ b) / 1e9)
    return best


def evaluation_figures(data: str) -> dict:
    """Apply cost, evaluation throughput in both dtypes, and the overhead of apply + evaluate over a plain
    Hugging Face forward of the same tokens."""
    loaded = load_model("smollm2-135m")
    model = loaded.model
    wins = perplexity.windows(load_tokens(loaded.tokenizer, data, "validation").ids, SEQ_LEN, N_WINDOWS)
    pruner = Pruner(model)
    gen = torch.Generator().manual_seed(0)
    genomes = [(0.3 + 0.3 * torch.rand(pruner.n_genes, generator=gen)).tolist() for _ in range(6)]
    pruner.apply(genomes[0])
    start = time.perf_counter()
    for g in genomes[1:]:
        pruner.apply(g)
    apply_s = (time.perf_counter() - start) / (len(genomes) - 1)

    bf16 = torch.bfloat16
    fast = pruner.in_dtype(bf16)  # what search fitness runs on: block matrices stored in bf16, under autocast
    eval_fp32 = best_of(lambda: perplexity.primary(model, wins), repeats=2)
    eval_bf16 = best_of(lambda: perplexity.primary(fast.model, wins, dtype=bf16), repeats=2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=bf16):
        plain = best_of(lambda: fast.model(wins), repeats=2)
    native = copy.deepcopy(model).to(bf16)
    with torch.inference_mode():
        plain_native = best_of(lambda: native(wins), repeats=2)
    del native
    alternate = itertools.cycle(genomes[1:3])  # each call applies a genome that differs from the last one
    fitness = best_of(lambda: (fast.apply(next(alternate)), perplexity.primary(fast.model, wins, dtype=bf16)), 2)
    errors = {}
    for rate in (0.0, 0.45):  # bf16 error grows with sparsity: measured dense and at the study's target
        pruner.apply(rate)
        fast.apply(rate)
        ppl32 = perplexity.primary(model, wins).ppl
        errors[rate] = abs(perplexity.primary(fast.model, wins, dtype=bf16).ppl - ppl32) / ppl32
    pruner.restore()
    flops = 2 * sum(p.numel() for p in model.parameters()) * wins.numel()
    return {"apply_s": apply_s, "eval_s_fp32": eval_fp32, "eval_s_bf16": eval_bf16, "plain_forward_s_bf16": plain,
            "plain_forward_s_native_bf16": plain_native, "fitness_s": fitness,
            "apply_over_eval": apply_s / eval_bf16, "overhead_ratio": fitness / plain,
            "overhead_ratio_vs_native_bf16": fitness / plain_native,
            "tokens_per_s_fp32": wins.numel() / eval_fp32, "tokens_per_s_bf16": wins.numel() / eval_bf16,
            "bf16_ppl_rel_error": max(errors.values()), "bf16_ppl_rel_error_dense": errors[0.0],
            "bf16_ppl_rel_error_45": errors[0.45], "flops_per_eval": flops}


def tokens_to_reach(checkpoint: dict, threshold: float) -> int | None:
    """Forward tokens a default-mode search had spent when one of its full-fidelity evaluations first scored at
    most ``threshold``. The checkpoint's fitness cache lists every evaluation in the order it was made."""
    config = checkpoint["config"]
    spent = 0
    for _, n_windows, value in checkpoint["cache"]:
        spent += n_windows * config["seq_len"]
        if n_windows == config["fitness_windows"] and value <= threshold:
            return spent
    return None


def search_cost_figures(data: str) -> dict:
    """Forward tokens and wall time each mode of the committed offline run needed to reach its final best, and
    the tokens `default` needed to reach the fitness `seed` ended with, on the same (default's) fitness data,
    counted evaluation by evaluation."""
    runs = {name: read_json(OFFLINE / "search" / name / "result.json") for name in ("seed", "default")}
    seed, default = runs["seed"], runs["default"]
    config = default["config"]
    loaded = load_model("smollm2-135m")
    pruner = Pruner(loaded.model)
    pruner.apply(seed["genome"])
    wins = perplexity.windows(load_tokens(loaded.tokenizer, data, config["fitness_split"]).ids, config["seq_len"],
                              config["fitness_windows"])
    fast = pruner.in_dtype(perplexity.get_dtype(config["dtype"]))  # how the search scored its genomes
    seed_on_default_data = perplexity.primary(fast.model, wins, dtype=perplexity.get_dtype(config["dtype"])).ppl
    reached = tokens_to_reach(read_json(OFFLINE / "search" / "default" / "checkpoint.json"), seed_on_default_data)
    figures = {f"{name}_best_found_at": r["best_found_at"] for name, r in runs.items()}
    figures.update({
        "best_found_token_ratio": default["best_found_at"]["forward_tokens"] / seed["best_found_at"]["forward_tokens"],
        "best_found_wall_ratio": default["best_found_at"]["wall_s"] / seed["best_found_at"]["wall_s"],
        "seed_forward_tokens": seed["forward_tokens"],
        "seed_final_fitness_on_default_data": seed_on_default_data,
        "default_tokens_to_reach_seed": reached,
        "search_token_ratio": reached / seed["forward_tokens"] if reached else None,
        "search_token_ratio_vs_seed_best_found": (reached / seed["best_found_at"]["forward_tokens"]
                                                  if reached else None),
    })
    return figures


def search_peak_rss_gib(data: str) -> float:
    """Peak resident memory of a short default-mode search on SmolLM2, in a child process of its own."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "evoprune", "search", "--model", "smollm2-135m", "--data", data,
                        "--target", "0.45", "--population", "3", "--generations", "2", "--fitness-windows", "2",
                        "--test-windows", "1", "--no-progress", "--out", out], check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB -> GiB


def offline_wall_s() -> float | None:
    timings = OFFLINE / "timings.json"
    return sum(t["wall_s"] for t in read_json(timings).values()) if timings.exists() else None


def main() -> None:
    data = os.environ.get("EVOPRUNE_DATA_DIR")
    if not data:
        raise SystemExit("make bench needs the local WikiText copy: set EVOPRUNE_DATA_DIR (e.g. ../shared/data).")
    figures = evaluation_figures(data)
    figures["matmul_peak_gflops_fp32"] = matmul_peak_gflops(torch.float32)
    figures["matmul_peak_gflops_bf16"] = matmul_peak_gflops(torch.bfloat16)
    figures["eval_peak_fraction"] = figures["flops_per_eval"] / figures["eval_s_bf16"] / 1e9 / \
        figures["matmul_peak_gflops_bf16"]
    figures["eval_peak_fraction_fp32"] = figures["flops_per_eval"] / figures["eval_s_fp32"] / 1e9 / \
        figures["matmul_peak_gflops_fp32"]
    if (OFFLINE / "search" / "default" / "result.json").exists():
        figures.update(search_cost_figures(data))
    figures["peak_rss_gib"] = search_peak_rss_gib(data)
    figures["offline_wall_s"] = offline_wall_s()
    figures["threads"] = torch.get_num_threads()

    print(f"SmolLM2-135M, {N_WINDOWS}x{SEQ_LEN} validation tokens, {figures['threads']} threads")
    print(f"apply a new rate vector: {figures['apply_s'] * 1e3:.0f} ms = {figures['apply_over_eval']:.3f} of a bf16 "
          f"evaluation ({figures['eval_s_bf16']:.2f} s)")
    print(f"evaluation fp32: {figures['tokens_per_s_fp32']:.0f} tokens/s = {figures['eval_peak_fraction_fp32']:.2f} "
          f"of the fp32 matmul peak ({figures['matmul_peak_gflops_fp32']:.0f} GFLOP/s)")
    print(f"evaluation bf16: {figures['tokens_per_s_bf16']:.0f} tokens/s = {figures['eval_peak_fraction']:.2f} "
          f"of the bf16 matmul peak ({figures['matmul_peak_gflops_bf16']:.0f} GFLOP/s); perplexity "
          f"{figures['bf16_ppl_rel_error_dense']:.2%} from fp32 dense, {figures['bf16_ppl_rel_error_45']:.2%} at 45%")
    print(f"apply + evaluate ({figures['fitness_s']:.2f} s) over a plain Hugging Face forward of the same model "
          f"({figures['plain_forward_s_bf16']:.2f} s): {figures['overhead_ratio']:.2f}; over a forward of the "
          f"model cast wholly to bf16 ({figures['plain_forward_s_native_bf16']:.2f} s): "
          f"{figures['overhead_ratio_vs_native_bf16']:.2f}")
    if "search_token_ratio" in figures:
        print(f"offline run: default found its best after {figures['default_best_found_at']['forward_tokens']:,} "
              f"forward tokens, seed after {figures['seed_best_found_at']['forward_tokens']:,} "
              f"(ratio {figures['best_found_token_ratio']:.3f}; wall {figures['best_found_wall_ratio']:.3f})")
        print(f"default reached seed's final fitness ({figures['seed_final_fitness_on_default_data']:.2f} on "
              f"default's fitness windows) after {figures['default_tokens_to_reach_seed']} tokens; seed used "
              f"{figures['seed_forward_tokens']:,}: ratio {figures['search_token_ratio']} (against the tokens seed "
              f"needed to reach its own final best: {figures['search_token_ratio_vs_seed_best_found']})")
    print(f"peak resident memory of a short search: {figures['peak_rss_gib']:.2f} GiB")
    print(f"last committed offline run: {figures['offline_wall_s']} s")
    for key, target in TARGETS.items():
        print(f"  {key}: {figures.get(key)}  (target {target})")
    write_json(ROOT / "reports" / "bench.json", {"figures": figures, "provenance": provenance(command="make bench")})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
