"""Forward latency of SmolLM2-135M (float32) on one 1024-token window with 0, 3, 6 and 12 of its 30 blocks
removed, the configurations timed round-robin (``timing.compare_latency``). Per configuration: median and
interquartile range (IQR) of the time, the median ratio to the whole model's time in the same round, and the gain
over the previous configuration as paired differences (same round): a step is resolved when even its first
quartile is a gain, i.e. the smaller model was faster in at least three rounds of four. Prints a table; the last
line is one JSON object.

    .venv/bin/python bench/latency.py [--repeats 15] [--removed 0,3,6,12]
"""
from __future__ import annotations

import argparse
import json

import torch

from evoprune.models import blocks, load_model
from evoprune.timing import compare_latency, quartiles


def evenly_spaced(k: int, n: int) -> list[int]:
    """``k`` of ``n`` blocks spread over the depth (which ones does not change the cost)."""
    return [int((i + 0.5) * n / k) for i in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--removed", default="0,3,6,12", help="numbers of blocks removed, comma-separated")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    model = load_model(args.model).model
    n = len(blocks(model))
    removals = {int(k): evenly_spaced(int(k), n) for k in args.removed.split(",")}
    table = compare_latency(model, removals, seq_len=args.seq_len, repeats=args.repeats)
    results = list(table.values())
    whole = results[0]["forward"]["samples_ms"]
    rows = []
    for k, result, previous in zip(table, results, [None, *results]):
        f = result["forward"]
        row = {"removed": k, "blocks": result["blocks"], "median_ms": f["median_ms"], "iqr_ms": f["iqr_ms"],
               "ratio": quartiles([t / w for t, w in zip(f["samples_ms"], whole)])[1]}
        if previous is not None:
            gains = [p - t for p, t in zip(previous["forward"]["samples_ms"], f["samples_ms"])]
            row["step_gain_q1_ms"], row["step_gain_ms"], row["step_gain_q3_ms"] = quartiles(gains)
            row["step_resolved"] = row["step_gain_q1_ms"] > 0
        rows.append(row)
    print(f"{args.model}, float32, one {args.seq_len}-token forward, {args.repeats} interleaved repetitions, "
          f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'removed':>7} {'blocks':>6} {'median ms':>10} {'IQR ms':>8} {'/ whole':>8} "
          f"{'gain on previous ms (q1-q3)':>28}  resolved")
    for r in rows:
        step = (f"{r['step_gain_ms']:>8.1f} ({r['step_gain_q1_ms']:.1f} to {r['step_gain_q3_ms']:.1f})"
                f"  {r['step_resolved']}" if "step_gain_ms" in r else "")
        print(f"{r['removed']:>7} {r['blocks']:>6} {r['median_ms']:>10.1f} {r['iqr_ms']:>8.1f} {r['ratio']:>8.3f} "
              f"{step:>28}")
    print(json.dumps({"model": args.model, "seq_len": args.seq_len, "repeats": args.repeats,
                      "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "rows": rows}))


if __name__ == "__main__":
    main()
