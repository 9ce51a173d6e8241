"""The artifact store (DESIGN §11): one interface, two backends.

* :class:`LocalArtifactStore` — a directory (embedded mode, tests, one machine). URIs are
  ``local://<key>``. Writes go to a temporary name, are fsynced and renamed.
* :class:`S3ArtifactStore` — S3-compatible object storage (AWS S3, MinIO, Ceph RGW) through boto3.
  URIs are ``s3://<bucket>/<prefix><key>``. Writes put the object to its final key once its
  sha256 is known, with the checksum sent along (``ChecksumSHA256``: AWS S3 and MinIO refuse a
  body that does not match) and, unless ``storage.verify_writes`` is off, read back and hashed
  before the URI is handed out (not every S3-compatible server checks the header). Credentials
  come from boto3's standard chain (environment, shared config, instance/IRSA roles).

Every key is content-addressed: ``<prefix>/<sha256[:2]>/<sha256><suffix>``, so writing the same
content twice is harmless and every read can be verified against the name. A write always
refreshes the object's modification time (local: ``utime``; S3: the put itself), which is what
the deletion grace period measures: an object is deleted only when no row references it *and*
nobody wrote it for ``storage.delete_grace_s`` — a concurrent identical write is never lost.

Deleting from S3 deletes **every version** of the key (and its delete markers) in a versioned
bucket, so purged bytes cannot be read back by version id.

:func:`make_store` builds the configured backend; :meth:`ArtifactStore.check` is what ``/readyz``
and the startup check call.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # pragma: no cover
    from service.core.config import StorageSettings

SCHEME = "local://"
S3_SCHEME = "s3://"
BLOCK = 1 << 20
_DIGEST = re.compile(r"^([0-9a-f]{64})(?:\.|$)")


class StorageError(RuntimeError):
    """Base of the store's errors."""


class StorageUnavailable(StorageError):
    """The store cannot be used: endpoint unreachable, bucket missing, credentials refused."""


class ArtifactCorrupt(StorageError):
    """An object's bytes do not match the sha256 its name (or its row) promises."""


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size: int


def digest_of(uri: str) -> str | None:
    """The sha256 a content-addressed URI names (its file name up to the suffix), if any."""
    m = _DIGEST.match(uri.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def _key_for(prefix: str, sha256: str, suffix: str) -> str:
    return f"{prefix.strip('/')}/{sha256[:2]}/{sha256}{suffix}"


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


class VerifyingReader:
    """A file-like reader that hashes what passes through; :meth:`verify` compares the digest."""

    def __init__(self, raw: BinaryIO, uri: str, expected: str | None) -> None:
        self.raw, self.uri, self.expected = raw, uri, expected
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.h.update(data)
        self.n += len(data)
        return data

    def verify(self) -> None:
        """Read whatever is left, then raise :class:`ArtifactCorrupt` when the digest differs."""
        for block in iter(lambda: self.read(BLOCK), b""):
            pass
        if self.expected is not None and self.h.hexdigest() != self.expected:
            raise ArtifactCorrupt(f"{self.uri}: sha256 {self.h.hexdigest()} does not match {self.expected}")

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "VerifyingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArtifactStore(ABC):
    """What the service and the workers need of an artifact store. Keys are content-addressed."""

    backend: str

    # -- writing ------------------------------------------------------------------------
    @abstractmethod
    def put_bytes(self, data: bytes, *, prefix: str, suffix: str = "") -> StoredArtifact:
        """Store ``data`` under its content address; verified before the URI is returned."""

    @abstractmethod
    def put_file(self, src: Path | str, *, prefix: str, suffix: str = "") -> StoredArtifact:
        """Adopt a finished local file (from :meth:`temp_path`) by content hash; ``src`` is consumed."""

    @abstractmethod
    def temp_path(self, suffix: str = "") -> Path:
        """A local scratch file to write an artifact into before :meth:`put_file`."""

    def touch(self, uri: str) -> None:  # noqa: B027 - optional: backends whose puts always write
        """Refresh the modification time of ``uri`` (a write of identical content)."""

    # -- reading ------------------------------------------------------------------------
    @abstractmethod
    def stat(self, uri: str) -> tuple[int, float] | None:
        """``(size, modified_at epoch seconds)`` or None when the object does not exist."""

    @abstractmethod
    def _open_raw(self, uri: str) -> BinaryIO:
        """A streaming reader over the object (raises FileNotFoundError)."""

    @abstractmethod
    def iter_range(self, uri: str, start: int, end: int, block: int = BLOCK) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) in blocks of at most ``block`` bytes; memory flat."""

    def exists(self, uri: str) -> bool:
        return self.stat(uri) is not None

    def size(self, uri: str) -> int:
        st = self.stat(uri)
        if st is None:
            raise FileNotFoundError(uri)
        return st[0]

    def modified_at(self, uri: str) -> float | None:
        st = self.stat(uri)
        return None if st is None else st[1]

    def open(self, uri: str, *, sha256: str | None = None) -> VerifyingReader:
        """A streaming reader that checks the content address (or ``sha256``) on :meth:`~VerifyingReader.verify`."""
        return VerifyingReader(self._open_raw(uri), uri, sha256 or digest_of(uri))

    def read_bytes(self, uri: str, *, sha256: str | None = None) -> bytes:
        """The whole object, refused (:class:`ArtifactCorrupt`) when it does not match its address."""
        with self._open_raw(uri) as f:
            data = f.read()
        expected = sha256 or digest_of(uri)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactCorrupt(f"{uri}: stored bytes do not match sha256 {expected}")
        return data

    def verify(self, uri: str, sha256: str, size: int | None = None) -> None:
        """Raise unless the object exists and its bytes hash to ``sha256`` (streamed, memory flat)."""
        try:
            with self.open(uri, sha256=sha256) as r:
                r.verify()
                n = r.n
        except FileNotFoundError:
            raise ArtifactCorrupt(f"{uri} is missing from the store") from None
        if size is not None and n != size:
            raise ArtifactCorrupt(f"{uri} holds {n} bytes, expected {size}")

    # -- deleting / listing -------------------------------------------------------------
    @abstractmethod
    def delete(self, uri: str) -> bool:
        """Delete the object (every version of it). True when something was deleted."""

    @abstractmethod
    def list_uris(self, prefix: str) -> list[str]:
        """URIs of the objects under ``prefix`` (temporary files excluded)."""

    def idle_for(self, uri: str) -> float | None:
        """Seconds since the object was last written, or None when it does not exist."""
        m = self.modified_at(uri)
        return None if m is None else max(0.0, time.time() - m)

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageUnavailable` with a reason when the store cannot be used."""

    def describe(self) -> str:
        return self.backend


# ----------------------------------------------------------------------------- local
class LocalArtifactStore(ArtifactStore):
    backend = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"local directory {self.root}"

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
        return SCHEME + _key_for(prefix, sha256, suffix)

    # -- writing ------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, prefix: str, suffix: str = "") -> StoredArtifact:
        digest = hashlib.sha256(data).hexdigest()
        uri = self.uri_for(prefix, digest, suffix)
        target = self.path(uri)
        if target.exists():
            os.utime(target)
        else:
            self._atomic_write(target, lambda f: f.write(data))
        return StoredArtifact(uri=uri, sha256=digest, size=len(data))

    def put_file(self, src: Path | str, *, prefix: str, suffix: str = "") -> StoredArtifact:
        src = Path(src)
        digest, size = _file_digest(src)
        uri = self.uri_for(prefix, digest, suffix)
        target = self.path(uri)
        if target.exists():
            src.unlink(missing_ok=True)
            os.utime(target)
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

    def touch(self, uri: str) -> None:
        os.utime(self.path(uri))

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

    # -- reading ------------------------------------------------------------------------
    def stat(self, uri: str) -> tuple[int, float] | None:
        try:
            st = self.path(uri).stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime

    def _open_raw(self, uri: str) -> BinaryIO:
        return open(self.path(uri), "rb")

    def iter_range(self, uri: str, start: int, end: int, block: int = BLOCK) -> Iterator[bytes]:
        with open(self.path(uri), "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                data = f.read(min(block, left))
                if not data:
                    break
                left -= len(data)
                yield data

    # -- deleting / listing -------------------------------------------------------------
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

    def check(self) -> None:
        # a name of its own per call: concurrent readiness probes never unlink each other's file
        probe = self.root / f".lethe-ready-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"artifact directory {self.root} is not writable: {exc}") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- S3
class _RangeReader:
    """Sequential reads of an S3 object through successive ranged GETs of ``block`` bytes:
    memory stays at one block whatever the object's size, and a dropped connection costs one block."""

    def __init__(self, store: "S3ArtifactStore", key: str, size: int, block: int) -> None:
        self.store, self.key, self.size, self.block = store, key, size, block
        self.pos = 0
        self.buf = b""
        self.off = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos + len(self.buf) - self.off
        out = []
        need = n
        while need > 0:
            if self.off >= len(self.buf):
                if self.pos >= self.size:
                    break
                end = min(self.pos + max(self.block, need), self.size) - 1
                self.buf, self.off = self.store._get_range(self.key, self.pos, end), 0
                self.pos = end + 1
                if not self.buf:
                    break
            take = self.buf[self.off:self.off + need]
            self.off += len(take)
            out.append(take)
            need -= len(take)
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        self.buf, self.off = b"", 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class S3ArtifactStore(ArtifactStore):
    backend = "s3"

    def __init__(self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str = "auto", connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_attempts: int = 3, range_block_bytes: int = 8 << 20, scratch_dir: Path | str | None = None,
                 verify_writes: bool = True) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise StorageUnavailable("LETHE_STORAGE__BUCKET must be set when LETHE_STORAGE__BACKEND=s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.range_block_bytes = range_block_bytes
        self.verify_writes = verify_writes
        self.scratch_dir = Path(scratch_dir) if scratch_dir else None
        cfg = Config(
            s3={"addressing_style": addressing_style},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
        # Readiness probes answer fast: one attempt, short timeouts.
        self._probe = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg.merge(Config(
            connect_timeout=min(connect_timeout_s, 2.0), read_timeout=min(read_timeout_s, 5.0), retries={"max_attempts": 1, "mode": "standard"})))

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3 bucket {self.bucket!r}{where}"

    # -- naming -------------------------------------------------------------------------
    def uri_for(self, prefix: str, sha256: str, suffix: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}{_key_for(prefix, sha256, suffix)}"

    def key(self, uri: str) -> str:
        head = f"{S3_SCHEME}{self.bucket}/{self.prefix}"
        if not uri.startswith(head):
            raise ValueError(f"not an artifact uri of {self.describe()}: {uri!r}")
        key = uri[len(S3_SCHEME) + len(self.bucket) + 1:]
        if ".." in key.split("/") or not key[len(self.prefix):]:
            raise ValueError(f"artifact uri escapes the store: {uri!r}")
        return key

    def _uri(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"

    # -- writing ------------------------------------------------------------------------
    def _put(self, key: str, body, digest: str, size: int) -> None:
        from botocore.exceptions import ClientError

        b64 = base64.b64encode(bytes.fromhex(digest)).decode()
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                          ChecksumSHA256=b64, Metadata={"sha256": digest})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BadDigest", "InvalidRequest", "XAmzContentSHA256Mismatch") or "checksum" in str(exc).lower():
                raise ArtifactCorrupt(f"{self._uri(key)}: the store refused the upload ({code}: checksum mismatch)") from None
            raise
        if not self.verify_writes:
            return
        # Read back what the store holds (streamed, hashed) before anyone may name it: not every
        # S3-compatible server checks ChecksumSHA256 itself.
        try:
            self.verify(self._uri(key), digest, size)
        except ArtifactCorrupt:
            self._delete_version(key, resp.get("VersionId"))
            raise

    def put_bytes(self, data: bytes, *, prefix: str, suffix: str = "") -> StoredArtifact:
        digest = hashlib.sha256(data).hexdigest()
        key = f"{self.prefix}{_key_for(prefix, digest, suffix)}"
        self._put(key, data, digest, len(data))
        return StoredArtifact(uri=self._uri(key), sha256=digest, size=len(data))

    def put_file(self, src: Path | str, *, prefix: str, suffix: str = "") -> StoredArtifact:
        src = Path(src)
        digest, size = _file_digest(src)
        key = f"{self.prefix}{_key_for(prefix, digest, suffix)}"
        try:
            with open(src, "rb") as f:
                self._put(key, f, digest, size)
        finally:
            src.unlink(missing_ok=True)
        return StoredArtifact(uri=self._uri(key), sha256=digest, size=size)

    def temp_path(self, suffix: str = "") -> Path:
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch_dir, prefix="lethe-", suffix=suffix)
        os.close(fd)
        return Path(name)

    # -- reading ------------------------------------------------------------------------
    def stat(self, uri: str) -> tuple[int, float] | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(uri))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"]), head["LastModified"].timestamp()

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self._uri(key)) from None
            raise
        body = resp["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _open_raw(self, uri: str) -> BinaryIO:
        st = self.stat(uri)
        if st is None:
            raise FileNotFoundError(uri)
        return _RangeReader(self, self.key(uri), st[0], self.range_block_bytes)  # type: ignore[return-value]

    def iter_range(self, uri: str, start: int, end: int, block: int = BLOCK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key(uri), Range=f"bytes={start}-{end}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise
        body = resp["Body"]
        try:
            yield from body.iter_chunks(block)
        finally:
            body.close()

    # -- deleting / listing -------------------------------------------------------------
    def _delete_version(self, key: str, version_id: str | None) -> None:
        kw = {"VersionId": version_id} if version_id else {}
        self.client.delete_object(Bucket=self.bucket, Key=key, **kw)

    def versions(self, uri: str) -> list[str]:
        """Every version id (and delete marker) stored under the URI's key."""
        key = self.key(uri)
        out = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == key:
                    out.append(v["VersionId"])
        return out

    def delete(self, uri: str) -> bool:
        """Delete every version and delete marker of the key (a plain delete in a versioned
        bucket only hides the bytes behind a marker)."""
        key = self.key(uri)
        existed = self.stat(uri) is not None
        ids = self.versions(uri)
        for i in range(0, len(ids), 1000):
            batch = [{"Key": key, "VersionId": v} for v in ids[i:i + 1000]]
            resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                raise StorageError(f"{uri}: could not delete {len(errors)} version(s): {errors[0].get('Message')}")
        if not ids and existed:  # a store without versioning support
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return existed or bool(ids)

    def list_uris(self, prefix: str) -> list[str]:
        full = f"{self.prefix}{prefix.strip('/')}/"
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out += [self._uri(o["Key"]) for o in page.get("Contents", [])]
        return out

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        where = self.describe()
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageUnavailable(f"{where}: no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)") from None
        except EndpointConnectionError as exc:
            raise StorageUnavailable(f"{where}: endpoint unreachable ({exc})") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageUnavailable(f"{where}: bucket {self.bucket!r} does not exist") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                raise StorageUnavailable(f"{where}: access denied ({code}): check the credentials and the bucket policy") from None
            raise StorageUnavailable(f"{where}: {code or type(exc).__name__}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None


def make_store(settings: "StorageSettings") -> ArtifactStore:
    """The backend the settings name (``storage.backend``)."""
    if settings.backend == "s3":
        return S3ArtifactStore(
            bucket=settings.bucket, prefix=settings.prefix, endpoint_url=settings.endpoint_url, region=settings.region,
            addressing_style=settings.addressing_style, connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s, max_attempts=settings.max_attempts,
            range_block_bytes=settings.range_block_bytes, scratch_dir=settings.scratch_dir,
            verify_writes=settings.verify_writes,
        )
    return LocalArtifactStore(settings.root)
