"""Timing: calls timed round-robin (a slow phase of a busy machine hits every configuration alike), their median
and spread, and the latency of a model with sets of blocks removed."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from evoprune.models import BlocksRemoved, blocks


def timings(fn, repeats: int = 3) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    return interleaved_timings({"fn": fn}, repeats)["fn"]


def interleaved_timings(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each function, after one warm-up call of each, taken round-robin (each
    round in a rotated order): a slow phase of a busy machine hits every configuration alike instead of one."""
    for fn in fns.values():
        fn()
    names, samples = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    return tuple(statistics.quantiles(values, n=4, method="inclusive")) if len(values) > 1 else (values[0],) * 3


def spread_ms(seconds: list[float]) -> dict:
    """Median and interquartile range in milliseconds, and the samples (in the order taken)."""
    q1, median, q3 = quartiles(seconds)
    return {"median_ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "iqr_ms": 1e3 * (q3 - q1),
            "repeats": len(seconds), "samples_ms": [round(1e3 * s, 3) for s in seconds]}


@torch.inference_mode()
def compare_latency(model: nn.Module, removals: dict, prompt: torch.Tensor | None = None, new_tokens: int = 32,
                    seq_len: int = 1024, repeats: int = 10) -> dict[str, dict]:
    """Latency of ``model`` with each set of blocks in ``removals`` (name -> block indices, [] for the whole
    model) removed, measured interleaved: ``forward`` is one ``seq_len``-token window, ``token`` one greedily
    generated token after ``prompt`` (skipped without a prompt), each as median and IQR over ``repeats``."""
    window = torch.arange(seq_len, device=model.device).remainder(model.config.vocab_size).view(1, -1)

    def run(drop, fn):
        def call():
            with BlocksRemoved(model, drop) as smaller:
                fn(smaller)
        return call

    def generate(m):
        m.generate(prompt.view(1, -1), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0)

    fns = {(name, "forward"): run(drop, lambda m: m(window)) for name, drop in removals.items()}
    if prompt is not None:
        fns.update({(name, "token"): run(drop, generate) for name, drop in removals.items()})
    samples = interleaved_timings(fns, repeats)
    n = len(blocks(model))
    out = {name: {"blocks": n - len(set(drop)), "seq_len": seq_len} for name, drop in removals.items()}
    for (name, what), seconds in samples.items():
        per = new_tokens if what == "token" else 1
        out[name][what] = spread_ms([s / per for s in seconds])
    return out


def latency(model: nn.Module, prompt: torch.Tensor, new_tokens: int = 32, seq_len: int = 1024,
            repeats: int = 3) -> dict:
    """Median ms per generated token (greedy, warm-up excluded) and per ``seq_len``-token forward, with their
    spread; to compare configurations, time them together with ``compare_latency``."""
    result = compare_latency(model, {"model": []}, prompt, new_tokens, seq_len, repeats)["model"]
    return {"ms_per_token": result["token"]["median_ms"], "ms_per_forward": result["forward"]["median_ms"],
            **result}
