"""Downstream accuracy of a (pruned) in-memory model through lm-evaluation-harness (``pip install
'evoprune[downstream]'``): ``python -m evoprune downstream --model M --rates GENOME --tasks T1,T2``.

The model goes to the harness as ``HFLM(pretrained=model, tokenizer=tokenizer)``, so nothing is fetched by name.
The harness's own tasks (hellaswag, arc_easy, piqa, winogrande, ...) read their data from the Hugging Face hub
and need a network. Offline, the project's own task works: ``wikitext_lastword`` (``tasks/wikitext_lastword.yaml``),
LAMBADA-style last-word prediction on sentences of the WikiText-2 raw test split: the context is the sentence
and up to ``CONTEXT_WORDS`` words of the sentences before it in its paragraph; the target is the sentence's last
word, kept only when it is alphabetic, at least ``MIN_LETTERS`` letters long and already in the context (so it can
be inferred); ``ITEMS`` items evenly spaced over all candidates, written once to a JSONL file under data/cache.
Accuracy is the share of items whose target the model produces greedily, token by token (LAMBADA's ``acc``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import sys
from pathlib import Path

from evoprune import EvopruneError

TASK_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS = ("wikitext_lastword",)
STANDARD_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")
ITEMS, CONTEXT_WORDS, MIN_LETTERS = 400, 80, 4


def import_lm_eval():
    try:
        import lm_eval
        import lm_eval.tasks  # noqa: F401
    except ImportError:
        raise EvopruneError("downstream evaluation needs lm-evaluation-harness, an optional extra: "
                            "pip install 'evoprune[downstream]'") from None
    return lm_eval


# --- the local task ----------------------------------------------------------------------------------------

def sentences(paragraph: str) -> list[list[str]]:
    """A raw WikiText paragraph's sentences as word lists, each ending in its final " ."."""
    words, out = paragraph.split(), [[]]
    for word in words:
        out[-1].append(word)
        if word == ".":
            out.append([])
    return [s for s in out if len(s) > 2 and s[-1] == "."]


def lastword_items(text: str, n: int = ITEMS) -> list[dict]:
    """``n`` items {"context", "target"} evenly spaced over every candidate sentence of the text, in text order."""
    candidates = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("="):  # blank lines and headings
            continue
        before: list[str] = []
        for sentence in sentences(line):
            target, context = sentence[-2], before[-CONTEXT_WORDS:] + sentence[:-2]
            if (target.isalpha() and len(target) >= MIN_LETTERS and len(before) > 0
                    and target.lower() in {w.lower() for w in context}):
                candidates.append({"context": " ".join(context), "target": target})
            before += sentence
    if len(candidates) < n:
        raise EvopruneError(f"the text gives {len(candidates)} last-word items, fewer than {n}.")
    return [candidates[i * len(candidates) // n] for i in range(n)]


def lastword_file(data: str | None = None) -> Path:
    """The local task's JSONL file, generated on first use from the WikiText-2 test split of ``data`` (default
    $EVOPRUNE_DATA_DIR, else the hub), named by the text's hash."""
    from evoprune.data import default_data, read_text
    from evoprune.models import CACHE_DIR
    from evoprune.records import write_text
    text, _ = read_text(data or default_data(), "test")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = CACHE_DIR / "tasks" / f"wikitext_lastword-{ITEMS}-{CONTEXT_WORDS}-{MIN_LETTERS}-{digest}.jsonl"
    if not path.is_file():
        write_text(path, "".join(json.dumps(item) + "\n" for item in lastword_items(text)))
    return path


def lastword_dataset(data: str | None = None, **_):
    """The harness's ``custom_dataset`` of the local task: its JSONL file, read by the datasets json loader."""
    import datasets
    return datasets.load_dataset("json", data_files={"test": str(lastword_file(data))})


# --- evaluation --------------------------------------------------------------------------------------------

def task_manager(tasks: list[str], data: str | None = None):
    """A TaskManager that knows the project's tasks (and the harness's, when a task is not local)."""
    from evoprune.models import hub_reachable
    manager = indexed_tasks(not all(t in LOCAL_TASKS for t in tasks), data)
    for task in tasks:
        if task not in manager.all_tasks:
            raise EvopruneError(f"unknown task {task!r}: the local task is {', '.join(LOCAL_TASKS)}; lm-evaluation-"
                                f"harness's own tasks ({', '.join(STANDARD_TASKS)}, ...) need a network.")
        if task not in LOCAL_TASKS and not hub_reachable():
            raise EvopruneError(f"task {task!r} reads its data from the Hugging Face hub, which is unreachable: "
                                f"offline, use {', '.join(LOCAL_TASKS)}.")
    return manager


@functools.lru_cache(maxsize=4)
def indexed_tasks(include_defaults: bool, data: str | None):
    """The harness's TaskManager over the project's tasks (and its own, which take seconds to index), built once
    per setting in a process."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(TASK_DIR), include_defaults=include_defaults, metadata={"data": data})


def accuracy_of(metrics: dict) -> float:
    """The task's accuracy: length-normalized where the harness reports it (multiple choice), else acc."""
    for name in ("acc_norm,none", "acc,none"):
        if name in metrics:
            return float(metrics[name])
    raise EvopruneError(f"the task reports no accuracy (metrics: {', '.join(metrics)}).")


def count_input(dtype: str):
    """A forward pre-hook adding the harness's input tokens (padding included: they are run) to the process's
    forward-token count, so a notebook's tokens cover its downstream scoring too."""
    from evoprune.perplexity import count_forward, get_dtype
    torch_dtype = get_dtype(dtype)

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            count_forward(torch_dtype, ids.numel())
    return hook


@contextlib.contextmanager
def quiet_harness():
    """The harness's per-request progress bars and notices held back (they would flood a notebook: several per
    model); shown after all if it fails. Its errors still go to the log."""
    held = io.StringIO()
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        logger.setLevel(level)


def evaluate(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8,
             data: str | None = None, dtype: str = "float32") -> dict:
    """{task: {"accuracy", "n", "metrics"}} of the in-memory ``model`` as it is now (pruned or not). ``limit``:
    the first items of each task only. ``data``: where the local task's text comes from (default
    $EVOPRUNE_DATA_DIR). ``dtype`` other than float32: run under autocast (a ``Session.model_in`` copy)."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    manager = task_manager(tasks, data)
    autocast = None if dtype == "float32" else dtype
    counting = model.register_forward_pre_hook(count_input(dtype), with_kwargs=True)
    try:
        with quiet_harness():  # HFLM's notices too: a model passed in, not by name, is this project's design
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, mixed_precision_dtype=autocast)
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                          bootstrap_iters=0, log_samples=False, random_seed=None,
                                          numpy_random_seed=None, torch_random_seed=None)  # zero-shot: no draws
    finally:
        counting.remove()
    return {task: {"accuracy": accuracy_of(out["results"][task]), "n": out["n-samples"][task]["effective"],
                   "metrics": {k: v for k, v in out["results"][task].items() if "," in k and isinstance(v, float)}}
            for task in tasks}


def accuracy_rows(model, tokenizer, pruner, genomes: dict, tasks: list[str], limit: int | None = None,
                  batch_size: int = 8, data: str | None = None) -> list[dict]:
    """One row {name, genome, block_sparsity, task, accuracy, n} per genome and task, ``model`` pruned by
    ``pruner`` to each genome in turn (a number means uniform); the pruner is restored at the end."""
    from tqdm.auto import tqdm
    rows = []
    try:
        for name, genome in tqdm(genomes.items(), desc=f"downstream ({', '.join(tasks)})", unit="model"):
            pruner.apply(genome)
            sparsity = pruner.block_sparsity()
            for task, result in evaluate(model, tokenizer, tasks, limit, batch_size, data).items():
                rows.append({"name": name, "genome": pruner.genome, "block_sparsity": sparsity, "task": task,
                             "accuracy": result["accuracy"], "n": result["n"]})
    finally:
        pruner.restore()
    return rows
