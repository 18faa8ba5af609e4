"""The schema of ``summary.json`` (the study's machine-readable result) and its validation."""
from __future__ import annotations

import math

from evoprune import EvopruneError


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ppl(v) -> str | None:
    return None if _is_number(v) and v >= 1 else "a perplexity (a finite number >= 1)"


def _check_rate(v) -> str | None:
    return None if _is_number(v) and 0 <= v <= 1 else "a rate in [0, 1]"


def _check_count(v) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "a non-negative integer"


def _check_seconds(v) -> str | None:
    return None if _is_number(v) and v >= 0 else "a non-negative number of seconds"


def _check_number(v) -> str | None:
    return None if _is_number(v) else "a finite number"


def _check_genome(v) -> str | None:
    ok = isinstance(v, list) and v and all(_check_rate(g) is None for g in v)
    return None if ok else "a non-empty list of rates in [0, 1]"


def _type(kind: type, name: str):
    return lambda v: None if isinstance(v, kind) and v else f"a non-empty {name}"


SUMMARY_SCHEMA = {"profile": _type(str, "string"), "model": _type(str, "string"), "data": _type(dict, "object"),
                  "protocol": _type(dict, "object"), "provenance": _type(dict, "object"),
                  "dense": {"test_ppl": _check_ppl, "study_ppl": _check_ppl},
                  "uniform": [{"sparsity": _check_rate, "criterion": _type(str, "string"), "test_ppl": _check_ppl}],
                  "ga": [{"strategy": _type(str, "string"), "criterion": _type(str, "string"), "target": _check_rate,
                          "block_sparsity": _check_rate, "genome": _check_genome, "fitness": _check_number,
                          "test_ppl": _check_ppl, "study_ppl": _check_ppl, "evaluations": _check_count,
                          "forward_tokens": _check_count, "wall_s": _check_seconds}],
                  "removal": {"test_windows": _check_count, "dense_ppl": _check_ppl,
                              "points": [{"share": _check_rate, "test_ppl": _check_ppl}],
                              "exports": [{"ppl": _check_ppl, "ppl_reloaded": _check_ppl}]}}


def _schema_problems(obj, schema, where: str) -> list[str]:
    if callable(schema):
        expected = schema(obj)
        return [f"{where} is {obj!r}, expected {expected}"] if expected else []
    if isinstance(schema, list):
        if not isinstance(obj, list) or not obj:
            return [f"{where} must be a non-empty list"]
        return [p for i, item in enumerate(obj) for p in _schema_problems(item, schema[0], f"{where}[{i}]")]
    if not isinstance(obj, dict):
        return [f"{where} must be an object"]
    problems = [f"{where}.{key} is missing" for key in schema if key not in obj]
    return problems + [p for key, sub in schema.items() if key in obj
                       for p in _schema_problems(obj[key], sub, f"{where}.{key}")]


def validate_summary(obj) -> dict:
    """Check a summary.json object against SUMMARY_SCHEMA (extra keys are allowed); raise EvopruneError listing
    every problem, else return the object."""
    problems = _schema_problems(obj, SUMMARY_SCHEMA, "summary")
    if problems:
        raise EvopruneError("invalid summary: " + "; ".join(problems))
    return obj
