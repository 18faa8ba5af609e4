"""Settings declared once: a settings dataclass's field carries its help text, the strategies it applies to and
their defaults, so the command line's flags, the profiles' run entries and a search's identity all come from the
fields (``search.Settings`` for the optimizer, ``objective.FitnessSpec`` for what its fitness measures)."""
from __future__ import annotations

from dataclasses import field, fields

from evoprune import EvopruneError

STRATEGIES = ("published", "elitist", "race")


def option(help: str, strategies: tuple[str, ...] = STRATEGIES, default=None, **defaults):
    """A settings field: its help text, the strategies it applies to and per-strategy defaults."""
    return field(default=default, metadata={"help": help, "strategies": strategies, "defaults": defaults})


OWN = ("elitist", "race")  # this project's strategies: exact target, held-out fitness


def strategy_defaults(obj, strategy: str) -> None:
    """Fill a settings dataclass's None fields with ``strategy``'s defaults; a field set for a strategy it does
    not apply to is an error."""
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if strategy not in meta["strategies"] and value is not None:
            raise EvopruneError(f"{flag(f.name)} applies to --strategy {' or '.join(meta['strategies'])} only: "
                                f"drop it or use --strategy {meta['strategies'][0]}.")
        if value is None and strategy in meta["defaults"]:
            setattr(obj, f.name, meta["defaults"][strategy])


def applying(obj, strategy: str) -> dict:
    """A settings dataclass's fields that apply to ``strategy``, as a dict."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if strategy in f.metadata["strategies"]}


def default_of(cls, name: str, strategy: str):
    """A settings field's default under ``strategy``, read from its declaration."""
    f = cls.__dataclass_fields__[name]
    return f.metadata["defaults"].get(strategy, f.default)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
