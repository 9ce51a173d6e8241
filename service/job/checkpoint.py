"""``POST /v1/models/{name}/checkpoint``: a ``standard`` model's trained weights, or a
``linear_head`` model's feature extractor (DESIGN §6.8).

The body (a safetensors file of the network's ``state_dict``) is streamed to the artifact store
under its own body limit (``api.max_checkpoint_bytes``), never held in memory and never parsed
here: a ``checkpoint`` job validates it in the worker (names, shapes, dtypes, finite values
against the architecture) and publishes it as the model's version, or leaves the model
``invalid`` with the reason. Only the header's framing is checked at the door (a body that is not
safetensors at all is a 415/422 before anything is kept).
"""

from __future__ import annotations

import hashlib
import json
import os

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.errors import Conflict, UnsupportedMediaType, ValidationFailed
from service.client.tokens import Principal, require
from service.job import service
from service.job.router import to_read
from service.job.schemas import JobRead
from service.model_registry import service as registry
from service.models import JobKind
from workers.unlearning.methods import config_classes

router = APIRouter(tags=["jobs"])
CHECKPOINT_PATH = r"/v1/models/[^/]+/checkpoint"  # its own body limit (service.core.limits)
MEDIA = ("application/vnd.safetensors", "application/octet-stream")
HEADER_MAX = 100 * 1024 * 1024  # safetensors' own cap on the JSON header
# standard: the whole network; linear_head: its feature extractor (the head is trained by Lethe)
CHECKPOINT_FAMILIES = ("standard", "linear_head")


def _check_header(first: bytes, total: int) -> None:
    """The safetensors framing: an 8-byte little-endian length, then that many bytes of JSON."""
    if total < 8:
        raise ValidationFailed("the checkpoint is not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(first[:8], "little")
    if n <= 1 or n > HEADER_MAX or 8 + n > total:
        raise ValidationFailed(f"the checkpoint is not a safetensors file (header length {n} for {total} bytes)")
    if len(first) >= 8 + n:
        try:
            header = json.loads(first[8 : 8 + n])
        except ValueError:
            raise ValidationFailed("the checkpoint's safetensors header is not JSON") from None
        if not isinstance(header, dict):
            raise ValidationFailed("the checkpoint's safetensors header is not a JSON object")


@router.post("/v1/models/{name}/checkpoint", response_model=JobRead, status_code=202,
             responses={409: {"description": "Not a standard or linear_head model, a method that takes no checkpoint (gradient_ascent), or the model already has an active job"},
                        404: {"description": "Unknown model"}})
async def upload_checkpoint(name: str, request: Request, response: Response, session: Session = Depends(get_session, scope="function"),
                            who: Principal = Depends(require())) -> JobRead:
    """Upload a ``standard`` model's trained weights (admin): a safetensors ``state_dict``
    (``Content-Type: application/vnd.safetensors`` or ``application/octet-stream``). ``202`` with
    the ``checkpoint`` job that validates and publishes it; the model's samples must be the
    ones it was trained on (every later forget and the retrain fallback use them). For a
    ``linear_head`` model, the architecture's full ``state_dict`` whose extractor (all but the
    last ``nn.Linear``, which is checked and ignored) is used as is; the job trains the head on
    the user samples' features with a fresh secret b and publishes it with its (ε, δ) bound."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in MEDIA:
        raise UnsupportedMediaType(f"Unsupported Content-Type {media or 'none'!r}", accepted=list(MEDIA))
    model = await anyio.to_thread.run_sync(registry.get_model, session, name)
    registry.ensure_not_retired(model)
    if model.family not in CHECKPOINT_FAMILIES:
        raise Conflict(f"model {name!r} is of family {model.family!r}; checkpoints are for the families {', '.join(CHECKPOINT_FAMILIES)}",
                       model=name)
    refused = getattr(config_classes().get(model.method), "checkpoint_refused", None)
    if refused:
        raise Conflict(f"model {name!r} uses {model.method}, which takes no checkpoint: {refused}", model=name)
    store = request.app.state.store
    tmp = await anyio.to_thread.run_sync(store.temp_path, ".safetensors")
    digest, total, first = hashlib.sha256(), 0, b""
    try:
        with open(tmp, "wb") as out:
            async for block in request.stream():
                if len(first) < 1 << 16:
                    first += block[: (1 << 16) - len(first)]
                digest.update(block)
                total += len(block)
                await anyio.to_thread.run_sync(out.write, block)
        _check_header(first, total)

        def work() -> JobRead:
            art = store.put_file(tmp, prefix=f"checkpoints/{model.id}", suffix=".safetensors")
            current = registry.get_model(session, name)
            registry.checkpoint_received(session, current, art.uri, art.sha256, art.size, who.actor)
            job = service.create_job(session, request.app.state.settings, current, JobKind.checkpoint, actor=who.actor,
                                     config={"checkpoint_uri": art.uri, "checkpoint_sha256": art.sha256})
            response.headers["Location"] = f"/v1/jobs/{job.id}"
            return to_read(session, job)

        return await anyio.to_thread.run_sync(work)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
