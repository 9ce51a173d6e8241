"""The Python client model servers use to pull the latest clean weights (DESIGN §8).

    from workers.client import LetheClient, ModelHolder

    with LetheClient("http://lethe:8000", token) as client:
        pulled = client.pull("digits", "/srv/models")   # sha256-verified, atomic, an nn.Module
        pulled.module(x)

        holder = ModelHolder()
        client.watch("digits", "/srv/models", holder.swap)   # long-polls; swaps new versions in place
        holder.module(x)                                    # always the newest clean version

Files land in ``<to_dir>/<model>/<number>-<sha256[:12]>.safetensors`` with the manifest beside
them (``.json``). A download goes to a temporary file in the same directory, is hashed while it
streams, fsynced and renamed only when its sha256 matches the manifest: a reader never sees a
partial or tampered file. A file already present with the right hash is revalidated with
``If-None-Match`` (the server answers ``304`` and nothing is downloaded again).

A module is built only for an architecture of the registry (the built-ins, entry points in the
group ``lethe.architectures`` installed here) or one passed as ``LetheClient(...,
architectures={"key": builder})``; a manifest or file naming anything else fails with a
:class:`PullError` and nothing is imported (``load=False`` still downloads it).

Only ``httpx`` is imported here; torch is loaded (through ``workers.unlearning``) when a module is
built, so ``load=False`` pulls work without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("lethe.client")

ALIASES = ("latest", "production")
_BLOCK = 1 << 20


class PullError(Exception):
    """A pull failed; ``status`` and ``problem`` (the RFC 9457 body) when the server answered."""

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class VersionGone(PullError):
    """410: the version was revoked because it held data of deleted subjects. Never serve it."""


class ChecksumMismatch(PullError):
    """The downloaded bytes do not hash to the manifest's sha256; nothing was written."""


class ModelNotLoadable(PullError):
    """The weights cannot be built here, e.g. they name an architecture that is not registered (and
    was not passed in ``architectures``): nothing was imported. Retrying cannot help, so
    :meth:`LetheClient.watch` raises it."""


class Manifest(dict):
    """A version manifest (the JSON object) that also carries the response's ``etag``."""

    etag: str | None = None


@dataclass(frozen=True)
class PulledModel:
    path: Path
    manifest: dict[str, Any]
    module: Any  # a torch.nn.Module computing f_ML, or None with load=False

    @property
    def number(self) -> int:
        return int(self.manifest["number"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


class ModelHolder:
    """Holds the served model. ``swap`` replaces it atomically: a reader gets the old or the new
    module, never a mix. Pass ``holder.swap`` as ``on_update`` to :meth:`LetheClient.watch`."""

    def __init__(self, initial: PulledModel | None = None) -> None:
        self._lock = threading.Lock()
        self._current = initial
        self._changed = threading.Condition(self._lock)

    def swap(self, pulled: PulledModel) -> None:
        with self._lock:
            self._current = pulled
            self._changed.notify_all()

    @property
    def current(self) -> PulledModel | None:
        with self._lock:
            return self._current

    @property
    def module(self) -> Any:
        with self._lock:
            return None if self._current is None else self._current.module

    def wait_for(self, predicate: Callable[[PulledModel], bool], timeout: float) -> PulledModel | None:
        """Block until the held model satisfies ``predicate`` (or ``timeout`` seconds pass)."""
        with self._changed:
            self._changed.wait_for(lambda: self._current is not None and predicate(self._current), timeout=timeout)
            return self._current if self._current is not None and predicate(self._current) else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_atomic(target: Path, blocks: Iterable[bytes], *, expect_sha256: str | None = None, expect_size: int | None = None) -> str:
    """Stream ``blocks`` into a temp file beside ``target``; rename it into place only when the
    sha256 (and size) match. On any failure the temp file is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for block in blocks:
                h.update(block)
                size += len(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            raise ChecksumMismatch(f"sha256 of the download is {digest}, the manifest says {expect_sha256}; nothing was written")
        if expect_size is not None and size != expect_size:
            raise ChecksumMismatch(f"the download has {size} bytes, the manifest says {expect_size}; nothing was written")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return digest


def _problem(r: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = r.json()
    except ValueError:
        return (r.text[:200] or r.reason_phrase), {}
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or r.reason_phrase), body
    return r.reason_phrase, {}


def _raise_for(r: httpx.Response, what: str) -> None:
    if r.status_code < 400:
        return
    detail, problem = _problem(r)
    if r.status_code == 410:
        raise VersionGone(f"{what}: gone (410): {detail}", status=410, problem=problem)
    raise PullError(f"{what}: {r.status_code} {detail}", status=r.status_code, problem=problem)


class LetheClient:
    """A small synchronous client for the serving endpoints (a token with the ``serving`` role)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
                 architectures: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.timeout = float(timeout)
        self.architectures = dict(architectures or {})  # builders by key, beside the registry
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "lethe-client/1"},
            timeout=self.timeout,
            transport=transport,
        )
        self.last_error: Exception | None = None  # the last error watch() retried after

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LetheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ manifest
    def manifest(self, model: str, ref: str | int = "latest", etag: str | None = None, wait: float | None = None) -> Manifest | None:
        """The manifest of ``ref`` (``latest``, ``production`` or a number); ``None`` when it still
        matches ``etag`` (304). With ``wait`` the server holds the request up to that many seconds
        until the alias moves. The new ETag is ``manifest.etag``."""
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": wait} if wait else None
        r = self.http.get(f"/v1/models/{model}/versions/{ref}", headers=headers, params=params,
                          timeout=self.timeout + (wait or 0))
        if r.status_code == 304:
            return None
        _raise_for(r, f"manifest of {model}@{ref}")
        out = Manifest(r.json())
        out.etag = r.headers.get("etag")
        return out

    # ------------------------------------------------------------------------------ weights
    def target_path(self, manifest: dict[str, Any], to_dir: str | Path) -> Path:
        return Path(to_dir) / manifest["model"] / f"{manifest['number']}-{manifest['sha256'][:12]}.safetensors"

    def download(self, manifest: dict[str, Any], to_dir: str | Path) -> Path:
        """Download the weights the manifest names (by number, so an alias moving meanwhile cannot
        mix versions), verify sha256 and size, write atomically, and write the manifest beside."""
        target = self.target_path(manifest, to_dir)
        expected = manifest["sha256"]
        url = manifest.get("weights_url") or f"/v1/models/{manifest['model']}/versions/{manifest['number']}/weights"
        have = target.exists() and file_sha256(target) == expected
        headers = {"If-None-Match": f'"{expected}"'} if have else {}
        what = f"weights of {manifest['model']} v{manifest['number']}"
        with self.http.stream("GET", url, headers=headers) as r:
            if r.status_code == 304 and have:
                pass  # the local file is this version: nothing to download
            else:
                if r.status_code != 200:
                    r.read()
                    _raise_for(r, what)
                    raise PullError(f"{what}: unexpected status {r.status_code}", status=r.status_code)
                _write_atomic(target, r.iter_bytes(_BLOCK), expect_sha256=expected, expect_size=manifest.get("size_bytes"))
        meta = target.with_suffix(".json")
        _write_atomic(meta, [json.dumps(dict(manifest), indent=2, sort_keys=True).encode()])
        return target

    def pull(self, model: str, to_dir: str | Path, ref: str | int = "latest", *, load: bool = True) -> PulledModel:
        """Fetch the manifest of ``ref``, download (or revalidate) its weights and build the module."""
        manifest = self.manifest(model, ref)
        assert manifest is not None  # no etag sent: never a 304
        return self._materialise(manifest, to_dir, load)

    def _materialise(self, manifest: dict[str, Any], to_dir: str | Path, load: bool) -> PulledModel:
        path = self.download(manifest, to_dir)
        module = None
        if load:
            from workers.unlearning import ConfigError, load_model  # torch only when a module is wanted

            try:
                module = load_model(path, architectures=self.architectures)
            except ConfigError as exc:
                raise ModelNotLoadable(f"{manifest['model']} v{manifest['number']}: {exc}") from exc
            module.eval()
        return PulledModel(path=path, manifest=dict(manifest), module=module)

    # ------------------------------------------------------------------------------ watch
    def watch(
        self,
        model: str,
        to_dir: str | Path,
        on_update: Callable[[PulledModel], None],
        ref: str = "latest",
        wait: float = 30.0,
        stop_event: threading.Event | None = None,
        *,
        load: bool = True,
        max_backoff: float = 30.0,
    ) -> None:
        """Long-poll ``ref`` and call ``on_update`` with each new version (the current one first),
        until ``stop_event`` is set. Network errors, a model without versions yet, a revoked or
        corrupt download and server errors are retried with backoff; a bad token (401/403) or an
        invalid request (4xx) is raised."""
        if str(ref) not in ALIASES:
            raise ValueError(f"watch follows an alias ({', '.join(ALIASES)}); version {ref} never changes")
        stop_event = stop_event or threading.Event()
        etag: str | None = None
        delivered: tuple[Any, Any] | None = None
        backoff = 0.5
        while not stop_event.is_set():
            try:
                manifest = self.manifest(model, ref, etag=etag, wait=wait if etag else None)
                if manifest is None:
                    backoff = 0.5
                    continue
                if (manifest["number"], manifest["sha256"]) == delivered:  # same version (e.g. no ETag sent)
                    etag = manifest.etag
                    stop_event.wait(wait)
                    continue
                pulled = self._materialise(manifest, to_dir, load)
            except (httpx.TransportError, ChecksumMismatch, VersionGone) as exc:
                self.last_error = exc
                log.warning("watch %s@%s: %s; retrying in %.1fs", model, ref, exc, backoff)
            except ModelNotLoadable:
                raise
            except PullError as exc:
                if exc.status is not None and exc.status < 500 and exc.status not in (404, 408, 429):
                    raise
                self.last_error = exc
                log.warning("watch %s@%s: %s; retrying in %.1fs", model, ref, exc, backoff)
            else:
                on_update(pulled)
                etag, delivered = manifest.etag, (manifest["number"], manifest["sha256"])
                backoff = 0.5
                continue
            stop_event.wait(backoff)
            backoff = min(backoff * 2, max_backoff)
