"""The key that guards Triton's model-control API (load / unload: deploys and rollbacks).

`make serve` creates it once, owner-only, in artifacts/admin.key; the server refuses model control
without it in the `admin-key` header, over HTTP and gRPC alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from shopsearch.errors import ShopSearchError

ADMIN_HEADER = "admin-key"  # the header Triton checks on restricted API calls
ADMIN_KEY_FILE = "artifacts/admin.key"


def read_admin_key(path: Path) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ShopSearchError(f"admin key: cannot read {path} ({exc.strerror}); start the server with `make serve` first") from None
    if not key:
        raise ShopSearchError(f"admin key: {path} is empty")
    return key


def ensure_admin_key(path: Path) -> str:
    """The key that guards model load/unload; created once (owner-only) where it does not exist."""
    import secrets

    path = Path(path)
    if path.exists():
        return read_admin_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
