"""`make bench`: speed figures measured in one run on SmolLM2-135M, printed; the last line is one JSON object.

Figures are ratios measured in the same run (so they survive a busy or different machine) with raw numbers
beside them. Nothing here is asserted: targets are read against the printed values.
"""
from __future__ import annotations

import json
import os
import time

import torch

from evoprune import perplexity
from evoprune.data import load_tokens
from evoprune.models import load_model
from evoprune.pruning import Pruner

SEQ_LEN, N_WINDOWS = 1024, 4


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n ** 3 / best_of(lambda: a @ b) / 1e9)
    return best


def main() -> None:
    data = os.environ.get("EVOPRUNE_DATA_DIR")
    if not data:
        raise SystemExit("make bench needs the local WikiText copy: set EVOPRUNE_DATA_DIR (e.g. ../shared/data).")
    loaded = load_model("smollm2-135m")
    model = loaded.model
    ids = load_tokens(loaded.tokenizer, data, "validation").ids
    wins = perplexity.windows(ids, SEQ_LEN, N_WINDOWS)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = wins.numel()

    pruner = Pruner(model)
    gen = torch.Generator().manual_seed(0)
    genomes = [(0.3 + 0.3 * torch.rand(pruner.n_genes, generator=gen)).tolist() for _ in range(6)]
    pruner.apply(genomes[0])
    start = time.perf_counter()
    for g in genomes[1:]:
        pruner.apply(g)
    apply_s = (time.perf_counter() - start) / (len(genomes) - 1)

    eval_fp32 = best_of(lambda: perplexity.primary(model, wins), repeats=2)
    eval_bf16 = best_of(lambda: perplexity.primary(model, wins, dtype=torch.bfloat16), repeats=2)
    peak_fp32, peak_bf16 = matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16)
    flops = 2 * n_params * tokens
    figures = {
        "apply_over_eval": apply_s / eval_bf16,
        "apply_s": apply_s,
        "eval_s_fp32": eval_fp32,
        "eval_s_bf16": eval_bf16,
        "tokens_per_s_fp32": tokens / eval_fp32,
        "tokens_per_s_bf16": tokens / eval_bf16,
        "matmul_peak_gflops_fp32": peak_fp32,
        "matmul_peak_gflops_bf16": peak_bf16,
        "eval_peak_fraction_fp32": flops / eval_fp32 / 1e9 / peak_fp32,
        "eval_peak_fraction": flops / eval_bf16 / 1e9 / peak_bf16,
        "threads": torch.get_num_threads(),
    }
    print(f"SmolLM2-135M ({n_params / 1e6:.1f}M parameters), {N_WINDOWS}x{SEQ_LEN} validation tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"apply a new rate vector: {apply_s * 1e3:.0f} ms = {figures['apply_over_eval']:.3f} of one bf16 "
          f"evaluation ({eval_bf16:.2f} s)   [target <= 0.05]")
    print(f"evaluation fp32: {figures['tokens_per_s_fp32']:.0f} tokens/s = {figures['eval_peak_fraction_fp32']:.2f} "
          f"of the fp32 matmul peak ({peak_fp32:.0f} GFLOP/s)")
    print(f"evaluation bf16: {figures['tokens_per_s_bf16']:.0f} tokens/s = {figures['eval_peak_fraction']:.2f} "
          f"of the bf16 matmul peak ({peak_bf16:.0f} GFLOP/s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
