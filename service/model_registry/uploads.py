"""Parsing and validating sample uploads (JSON rows, .npz, safetensors). numpy only, no torch.

Everything is validated before anything is written: a bad upload changes nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from service.core.errors import BadRequest, InvalidTensor, ValidationFailed

MAX_ROWS = 100_000
SPLITS = ("core", "user", "eval")


@dataclass
class ParsedUpload:
    x: np.ndarray  # float32 (n, *input_shape)
    labels: np.ndarray  # int64 (n,)
    subject_ids: list[str]
    splits: list[str]


def validate(x: np.ndarray, labels: np.ndarray, subject_ids: list[str], splits: list[str], input_shape: list[int], num_classes: int) -> ParsedUpload:
    n = len(subject_ids)
    if n == 0:
        raise ValidationFailed("The upload holds no samples")
    if n > MAX_ROWS:
        raise ValidationFailed(f"At most {MAX_ROWS} samples per upload, got {n}")
    if x.ndim == 0 or x.shape[0] != n or labels.shape != (n,) or len(splits) != n:
        raise InvalidTensor(
            f"Row counts disagree: x has {x.shape[0] if x.ndim else 0}, labels {labels.shape[0] if labels.ndim else 0}, "
            f"subject_ids {n}, split {len(splits)}"
        )
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise InvalidTensor(f"x has sample shape {list(x.shape[1:])}, the model expects {list(input_shape)}", expected=list(input_shape))
    if x.dtype.kind != "f":
        raise InvalidTensor(f"x must be a float tensor (float32 or float64), got {x.dtype}")
    if labels.dtype.kind not in "iu":
        raise InvalidTensor(f"labels must be integers, got {labels.dtype}")
    finite = np.isfinite(x.reshape(n, -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidTensor(f"x contains NaN or infinity (first bad row {row})", row=row)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidTensor(f"label {int(labels[row])} at row {row} is outside [0, {num_classes})", row=row)
    for i, s in enumerate(splits):
        if s not in SPLITS:
            raise ValidationFailed(f"split {s!r} at row {i} is not one of {list(SPLITS)}", row=i)
    for i, sid in enumerate(subject_ids):
        if not isinstance(sid, str) or not sid.strip() or len(sid) > 256:
            raise ValidationFailed(f"subject_id at row {i} must be 1-256 characters", row=i)
    return ParsedUpload(np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64), list(subject_ids), list(splits))


def _splits(value, n: int) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return [str(arr.item())] * n
    return [str(s) for s in arr.tolist()]


def parse_json_rows(rows: list, input_shape: list[int], num_classes: int) -> ParsedUpload:
    try:
        x = np.asarray([r.x for r in rows], dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidTensor("x must be nested lists of numbers with the model's input shape") from None
    labels = np.asarray([r.label for r in rows], dtype=np.int64)
    return validate(x, labels, [r.subject_id for r in rows], [r.split for r in rows], input_shape, num_classes)


def parse_npz(body: bytes, input_shape: list[int], num_classes: int) -> ParsedUpload:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a client error
        raise BadRequest(f"Body is not a readable .npz archive ({type(exc).__name__})") from None
    missing = {"x", "labels", "subject_ids", "split"} - set(arrays)
    if missing:
        raise ValidationFailed(f"The .npz archive lacks arrays: {sorted(missing)}")
    sids = arrays["subject_ids"]
    if sids.dtype.kind not in "US":
        raise InvalidTensor(f"subject_ids must be a string array, got {sids.dtype}")
    sid_list = [str(s) for s in sids.reshape(-1).tolist()]
    return validate(arrays["x"], arrays["labels"].reshape(-1) if arrays["labels"].ndim else arrays["labels"], sid_list, _splits(arrays["split"], len(sid_list)), input_shape, num_classes)


def parse_safetensors(body: bytes, input_shape: list[int], num_classes: int) -> ParsedUpload:
    from safetensors.numpy import load

    try:
        tensors = load(body)
        n = int.from_bytes(body[:8], "little")
        meta = json.loads(body[8 : 8 + n]).get("__metadata__") or {}
    except Exception as exc:  # noqa: BLE001
        raise BadRequest(f"Body is not a readable safetensors file ({type(exc).__name__})") from None
    if "x" not in tensors or "labels" not in tensors:
        raise ValidationFailed("The safetensors file needs tensors 'x' and 'labels'")
    try:
        sids = json.loads(meta["subject_ids"])
        split_meta = meta["split"]
    except (KeyError, json.JSONDecodeError):
        raise ValidationFailed("The safetensors metadata needs 'subject_ids' (a JSON list) and 'split'") from None
    if not isinstance(sids, list):
        raise ValidationFailed("metadata subject_ids must be a JSON list of strings")
    try:
        splits = json.loads(split_meta) if split_meta.startswith("[") else split_meta
    except json.JSONDecodeError:
        raise ValidationFailed("metadata split must be a string or a JSON list") from None
    return validate(tensors["x"], tensors["labels"], [str(s) for s in sids], _splits(splits, len(sids)), input_shape, num_classes)
