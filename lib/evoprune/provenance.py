"""Provenance: where a number came from (code version, packages, machine, time), added to every record. No torch
until a record asks for the machine's torch capabilities."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from evoprune.records import ROOT

PACKAGES = ("torch", "transformers", "numpy", "evoprune")
PROTOCOLS = {
    "primary": "non-overlapping 1024-token windows over the test split, tail dropped; "
               "PPL = exp(total NLL / predicted tokens)",
    "study": "the published study's protocol: 1024-token windows every 512 tokens, 128 drawn with "
             "random.seed(365); PPL = exp(mean of per-window mean losses)",
}


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        # outputs a run rewrites (reports/, figures/) do not make the code that produced them dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports",
                                ":!figures"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_info() -> tuple[str, str]:
    """CPU model name and a hash of its feature flags, from /proc/cpuinfo (the platform's name elsewhere)."""
    found = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = found.get("model name") or platform.processor() or platform.machine()
    flags = found.get("flags") or found.get("Features", "")
    return name, hashlib.sha256(flags.encode()).hexdigest()[:16]


def hardware() -> dict:
    import torch  # imported here: reading and writing records needs no torch
    return {"cpu": cpu_info()[0], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def provenance(**fields) -> dict:
    """Where a number came from: the caller's fields (model, data, protocol, seed, dtype, ...) plus the code
    version, package versions, hardware and the time it was recorded."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {**fields, "git_commit": git_commit(), "packages": versions, "python": platform.python_version(),
            "hardware": hardware(), "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
