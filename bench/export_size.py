"""Size on disk of a pruned SmolLM2-135M exported dense (zeros stored) and compressed (compressed-tensors
sparse-bitmask), uniform magnitude pruning at each rate, weights in float32 and in bfloat16; and whether the
compressed export reloads (``export.load_compressed``) to logits identical to the dense export's. Prints a table,
then one JSON object (the last line, read by bench/run.py)."""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from evoprune.export import export, load_compressed
from evoprune.session import Session

RATES = (0.45, 0.5, 0.7)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def measure(model, dtype: str, ids: torch.Tensor) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dense = export(model, Path(tmp) / "dense")
        compressed = export(model, Path(tmp) / "compressed", format="compressed")
        reference = AutoModelForCausalLM.from_pretrained(dense["dir"]).eval()(ids).logits
        identical = torch.equal(load_compressed(compressed["dir"])(ids).logits, reference)
    return {"dtype": dtype, "dense_bytes": dense["bytes_on_disk"], "compressed_bytes": compressed["bytes_on_disk"],
            "ratio": compressed["bytes_on_disk"] / dense["bytes_on_disk"], "identical_logits": identical,
            "nonzero_parameters": compressed["nonzero_parameters"], "parameters": compressed["parameters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("EVOPRUNE_DATA_DIR"))
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    args = parser.parse_args()
    session = Session("smollm2-135m", args.data)
    ids = session.tokens("test").ids[:128].view(1, -1)
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        model = session.apply(rate).model
        for name, dtype in DTYPES.items():
            row = {"rate": rate, **measure(model if dtype == torch.float32 else copy.deepcopy(model).to(dtype),
                                           name, ids)}
            rows.append(row)
            print(f"rate {rate:.2f} {name:>8}: dense {row['dense_bytes'] / 2**20:7.1f} MiB, compressed "
                  f"{row['compressed_bytes'] / 2**20:7.1f} MiB ({row['ratio']:.3f}x), identical logits "
                  f"{row['identical_logits']}", flush=True)
        session.restore()
    print(json.dumps({"model": "smollm2-135m", "criterion": "magnitude", "cpu_capability":
                      torch.backends.cpu.get_cpu_capability(), "rows": rows}))


if __name__ == "__main__":
    main()
