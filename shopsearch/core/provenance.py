"""Where an artifact came from: content hashes, the code version, build and training times.

Checkpoints, build manifests and deploy records all carry these, so a served model version can be
traced back to its training run and its data.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (read in 1 MiB chunks: artifacts reach GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def git_revision() -> str:
    """The checked-out commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
