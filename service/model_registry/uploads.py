"""Parsing and validating sample uploads (JSON rows, .npz, safetensors). numpy only, no torch.

Everything is validated before anything is written: a bad upload changes nothing.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np

from service.core.errors import BadRequest, InvalidTensor, ValidationFailed
from service.core.types import SUBJECT_ID_RULES, normalize_subject_id

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
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    # Checked after the cast: a float64 beyond float32's range would be stored as infinity.
    finite = np.isfinite(x32.reshape(n, -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidTensor(f"x contains NaN or infinity (or a value beyond float32's range); first bad row {row}", row=row)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidTensor(f"label {int(labels[row])} at row {row} is outside [0, {num_classes})", row=row)
    for i, s in enumerate(splits):
        if s not in SPLITS:
            raise ValidationFailed(f"split {s!r} at row {i} is not one of {list(SPLITS)}", row=i)
    normalized = []
    for i, sid in enumerate(subject_ids):
        if not isinstance(sid, str):
            raise ValidationFailed(f"subject_id at row {i} must be a string", row=i)
        try:
            normalized.append(normalize_subject_id(sid))
        except ValueError as exc:
            raise ValidationFailed(f"subject_id at row {i}: {exc} ({SUBJECT_ID_RULES})", row=i, rule=str(exc)) from None
    return ParsedUpload(x32, labels.astype(np.int64), normalized, list(splits))


def _text(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationFailed("strings must be UTF-8") from None
    return str(value)


def _splits(value, n: int) -> list[str]:
    if isinstance(value, list) and not value:
        return []
    arr = np.asarray(value)
    if arr.dtype.kind not in "US":
        raise ValidationFailed(f"split must be a string or an array of strings, got {arr.dtype}")
    if arr.ndim == 0:
        return [_text(arr.item())] * n
    return [_text(s) for s in arr.reshape(-1).tolist()]


def parse_json_rows(rows: list, input_shape: list[int], num_classes: int) -> ParsedUpload:
    try:
        x = np.asarray([r.x for r in rows])
    except (ValueError, TypeError):
        raise InvalidTensor("x must be nested lists of numbers with the model's input shape "
                            f"{list(input_shape)}; rows differ in shape") from None
    if x.dtype.kind not in "iuf":
        raise InvalidTensor(f"x must be nested lists of numbers with the model's input shape {list(input_shape)}")
    x = x.astype(np.float64, copy=False)
    for i, r in enumerate(rows):  # before the int64 cast: a huge label must be a 422, not an overflow
        if not 0 <= r.label < num_classes:
            raise InvalidTensor(f"label {r.label} at row {i} is outside [0, {num_classes})", row=i)
    labels = np.asarray([r.label for r in rows], dtype=np.int64)
    return validate(x, labels, [r.subject_id for r in rows], [r.split for r in rows], input_shape, num_classes)


_NPZ_ARRAYS = ("x", "labels", "subject_ids", "split")


def _npz_headers(body: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member, read from the headers only (no decompression
    of the data), so a compressed archive that would expand to gigabytes is refused up front."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            out[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return out


def parse_npz(body: bytes, input_shape: list[int], num_classes: int) -> ParsedUpload:
    try:
        headers = _npz_headers(body)
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a client error
        raise BadRequest(f"Body is not a readable .npz archive ({type(exc).__name__})") from None
    missing = set(_NPZ_ARRAYS) - set(headers)
    if missing:
        raise ValidationFailed(f"The .npz archive lacks arrays: {sorted(missing)}")
    for name in _NPZ_ARRAYS:
        shape, dtype = headers[name]
        rows = shape[0] if shape else 1
        if rows > MAX_ROWS:
            raise ValidationFailed(f"At most {MAX_ROWS} samples per upload, got {rows} in '{name}'")
        if dtype.hasobject:
            raise InvalidTensor(f"'{name}' holds Python objects; only numeric and string arrays are accepted")
        if dtype.kind in "US" and dtype.itemsize > 4 * 1024:
            raise InvalidTensor(f"'{name}' holds strings longer than 1024 characters")
    x_shape = headers["x"][0]
    if tuple(x_shape[1:]) != tuple(input_shape):
        raise InvalidTensor(f"x has sample shape {list(x_shape[1:])}, the model expects {list(input_shape)}", expected=list(input_shape))
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            arrays = {k: z[k] for k in _NPZ_ARRAYS}
    except Exception as exc:  # noqa: BLE001
        raise BadRequest(f"Body is not a readable .npz archive ({type(exc).__name__})") from None
    sids = arrays["subject_ids"]
    if sids.dtype.kind not in "US":
        raise InvalidTensor(f"subject_ids must be a string array, got {sids.dtype}")
    if sids.ndim != 1:
        raise InvalidTensor(f"subject_ids must be a 1-d array, got shape {list(sids.shape)}")
    sid_list = [_text(s) for s in sids.tolist()]
    labels = arrays["labels"]
    return validate(arrays["x"], labels.reshape(-1) if labels.ndim else labels, sid_list,
                    _splits(arrays["split"], len(sid_list)), input_shape, num_classes)


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
    if not isinstance(sids, list) or not all(isinstance(s, str) for s in sids):
        raise ValidationFailed("metadata subject_ids must be a JSON list of strings")
    try:
        splits = json.loads(split_meta) if split_meta.startswith("[") else split_meta
    except json.JSONDecodeError:
        raise ValidationFailed("metadata split must be a string or a JSON list") from None
    if isinstance(splits, list) and not all(isinstance(v, str) for v in splits):
        raise ValidationFailed("metadata split must be a string or a JSON list of strings")
    return validate(tensors["x"], tensors["labels"], sids, _splits(splits, len(sids)), input_shape, num_classes)
