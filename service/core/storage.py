"""Local artifact store: content-addressed files written atomically.

Every artifact is written to a temporary name in the same directory, fsynced, then renamed
to a name derived from its sha256; writing the same content twice is harmless. URIs are
``local://<key>`` with ``key`` relative to the store root (an S3-compatible store can
implement the same four methods later).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SCHEME = "local://"


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size: int


class ArtifactStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- naming -------------------------------------------------------------------------
    def path(self, uri: str) -> Path:
        if not uri.startswith(SCHEME):
            raise ValueError(f"not a local artifact uri: {uri!r}")
        key = uri[len(SCHEME):]
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"artifact uri escapes the store: {uri!r}")
        return p

    def uri_for(self, prefix: str, sha256: str, suffix: str) -> str:
        return f"{SCHEME}{prefix}/{sha256[:2]}/{sha256}{suffix}"

    # -- writing ------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, prefix: str, suffix: str = "") -> StoredArtifact:
        digest = hashlib.sha256(data).hexdigest()
        uri = self.uri_for(prefix, digest, suffix)
        target = self.path(uri)
        if not target.exists():
            self._atomic_write(target, lambda f: f.write(data))
        return StoredArtifact(uri=uri, sha256=digest, size=len(data))

    def put_file(self, src: Path | str, *, prefix: str, suffix: str = "") -> StoredArtifact:
        """Adopt a finished local file (already fsynced by the caller or not) by content hash."""
        src = Path(src)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        size = src.stat().st_size
        uri = self.uri_for(prefix, digest, suffix)
        target = self.path(uri)
        if target.exists():
            src.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(src, target)
            _fsync_dir(target.parent)
        return StoredArtifact(uri=uri, sha256=digest, size=size)

    def temp_path(self, suffix: str = "") -> Path:
        """A temporary file path inside the store (same filesystem, so rename is atomic)."""
        tmpdir = self.root / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmpdir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def _atomic_write(self, target: Path, write) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- reading / deleting -------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def open(self, uri: str) -> BinaryIO:
        return open(self.path(uri), "rb")

    def read_bytes(self, uri: str) -> bytes:
        return self.path(uri).read_bytes()

    def size(self, uri: str) -> int:
        return self.path(uri).stat().st_size

    def delete(self, uri: str) -> bool:
        p = self.path(uri)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        return True

    def list_uris(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return [SCHEME + str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
