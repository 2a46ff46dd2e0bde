"""Atomic file writes (a failed or interrupted write leaves the earlier file intact),
file hashes, and the HMAC that signs an artifact's manifest."""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from pathlib import Path

from slimserve.core.errors import ArtifactError

SIGNING_KEY_ENV = "SLIMSERVE_SIGNING_KEY"


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def sha256_file(path: Path) -> str:
    """The file's sha256, read in blocks (a model of gigabytes is never held whole)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signing_key() -> bytes | None:
    """The key in ``SLIMSERVE_SIGNING_KEY``, or None when it is not set."""
    value = os.environ.get(SIGNING_KEY_ENV)
    if value is None:
        return None
    if not value.strip():
        raise ArtifactError(
            f"{SIGNING_KEY_ENV} is set but empty, which would sign with no secret. "
            "Give it a secret value, or unset it to work without signatures."
        )
    return value.encode()


def sign(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
