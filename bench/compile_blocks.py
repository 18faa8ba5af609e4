"""Does compiling the decoder blocks speed up the bf16 fitness evaluation? SmolLM2-135M at uniform 45% magnitude,
4 x 1024 validation tokens, the fitness copy (``Session.pruner(..., dtype)``): three eager evaluations, then every
block compiled with ``torch.compile`` (inductor, ``dynamic=False``) and three compiled ones, in one process.

Usage: python bench/compile_blocks.py [cache|nocache] [DTYPE]. ``cache`` scores as the search does (Hugging Face
builds a KV cache each forward); ``nocache`` turns the cache off (``config.use_cache = False``) for both, which
a compiled block needs to avoid recompiling on the cache's state. The last line is one JSON object (seconds).
"""
from __future__ import annotations

import json
import sys
import time

import torch

from evoprune import perplexity
from evoprune.data import default_data
from evoprune.session import Session


def timed(model, wins, dtype) -> tuple[float, float]:
    start = time.perf_counter()
    ppl = perplexity.primary(model, wins, dtype=dtype).ppl
    return time.perf_counter() - start, ppl


def main(cache: str = "nocache", dtype_name: str = "bfloat16") -> dict:
    session = Session("smollm2-135m", default_data())
    wins = perplexity.windows(session.tokens("validation").ids, 1024, 4)
    pruner = session.pruner("magnitude", 1, dtype_name)
    pruner.apply([0.45] * session.n_blocks)
    model, dtype = pruner.model, perplexity.get_dtype(dtype_name)
    model.config.use_cache = cache == "cache"
    eager = [timed(model, wins, dtype) for _ in range(3)]
    for block in model.model.layers:
        block.compile(dynamic=False)
    first = timed(model, wins, dtype)  # compiles
    compiled = [timed(model, wins, dtype) for _ in range(3)]
    return {"cache": cache, "dtype": dtype_name, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "eager_s": [round(t, 3) for t, _ in eager],
            "compiled_s": [round(t, 3) for t, _ in compiled], "first_compiled_s": round(first[0], 3),
            "eager_ppl": eager[0][1], "compiled_ppl": compiled[0][1]}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
