"""The Python client model servers use to pull the latest clean weights (DESIGN §8).

    from workers.client import LetheClient

    client = LetheClient("http://lethe:8000", token)
    pulled = client.pull("digits", "/srv/models")      # verified, atomic, returns an nn.Module
    pulled.module(x)

    holder = ModelHolder()
    client.watch("digits", "/srv/models", holder.swap)   # long-polls; swaps new versions in place
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx


class PullError(Exception):
    pass


class VersionGone(PullError):
    """The version was revoked (410): it held data of deleted subjects."""


@dataclass
class PulledModel:
    path: Path
    manifest: dict[str, Any]
    module: Any  # torch.nn.Module computing f_ML


class ModelHolder:
    """Holds the served module; ``swap`` replaces it atomically (readers see old or new)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: PulledModel | None = None

    def swap(self, pulled: PulledModel) -> None:
        with self._lock:
            self.current = pulled

    @property
    def module(self):
        with self._lock:
            return None if self.current is None else self.current.module


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(target: Path, chunks) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for block in chunks:
                h.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        return h.hexdigest(), tmp
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LetheClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def _check(self, r: httpx.Response) -> None:
        if r.status_code == 410:
            raise VersionGone(r.json().get("detail", "version revoked"))
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            raise PullError(f"{r.status_code}: {detail}")

    def manifest(self, model: str, ref: str = "latest", etag: str | None = None, wait: float | None = None) -> tuple[dict | None, str | None]:
        """(manifest, etag); manifest is None when unchanged (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": wait} if wait else None
        timeout = (wait or 0) + self.http.timeout.read if self.http.timeout.read else None
        r = self.http.get(f"/v1/models/{model}/versions/{ref}", headers=headers, params=params, timeout=timeout)
        if r.status_code == 304:
            return None, r.headers.get("etag", etag)
        self._check(r)
        return r.json(), r.headers.get("etag")

    def download(self, manifest: dict, to_dir: str | Path) -> Path:
        """Download the weights named by ``manifest``, verify sha256, write atomically."""
        target = Path(to_dir) / manifest["model"] / f"{manifest['number']}-{manifest['sha256'][:12]}.safetensors"
        if target.exists() and _sha256(target) == manifest["sha256"]:
            return target
        with self.http.stream("GET", manifest["weights_url"]) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            digest, tmp = _atomic_write(target, r.iter_bytes())
        if digest != manifest["sha256"]:
            Path(tmp).unlink(missing_ok=True)
            raise PullError(f"sha256 mismatch for {manifest['model']} v{manifest['number']}: got {digest}, expected {manifest['sha256']}")
        os.replace(tmp, target)
        meta = target.with_suffix(".json")
        digest_m, tmp_m = _atomic_write(meta, [json.dumps(manifest, indent=2, sort_keys=True).encode()])
        os.replace(tmp_m, meta)
        return target

    def pull(self, model: str, to_dir: str | Path, ref: str = "latest", *, load: bool = True) -> PulledModel:
        manifest, _ = self.manifest(model, ref)
        path = self.download(manifest, to_dir)
        module = None
        if load:
            from workers.unlearning import load_model

            module = load_model(path)
            module.eval()
        return PulledModel(path=path, manifest=manifest, module=module)

    def watch(
        self,
        model: str,
        to_dir: str | Path,
        on_update: Callable[[PulledModel], None],
        ref: str = "latest",
        wait: float = 30.0,
        stop_event: threading.Event | None = None,
    ) -> None:
        """Long-poll the manifest; on each new version download, verify, load and call ``on_update``."""
        stop_event = stop_event or threading.Event()
        etag = None
        while not stop_event.is_set():
            try:
                manifest, new_etag = self.manifest(model, ref, etag=etag, wait=wait if etag else None)
            except (httpx.TransportError, VersionGone):
                stop_event.wait(1.0)
                continue
            if manifest is not None:
                path = self.download(manifest, to_dir)
                from workers.unlearning import load_model

                on_update(PulledModel(path=path, manifest=manifest, module=load_model(path)))
            etag = new_etag
