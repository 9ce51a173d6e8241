"""Keys of the audit chain: HMAC keys for the links, an Ed25519 key for checkpoints.

Neither key is ever written to the database. Each has an *id*, derived from it, that is stored
with what it produced (an event's ``key_id``, a checkpoint's ``key_id``), so keys can rotate:
* an HMAC key's id is ``HMAC-SHA256(key, "lethe-audit-key-id")[:16]`` (reveals nothing of a
  random key);
* a signing key's id is ``sha256(raw public key)[:16]``, so anyone holding the public key can
  tell which key a checkpoint claims.

The process-wide keys are set by :func:`configure` (``create_app``, the CLI, the worker) and
default to the ones in :func:`service.core.config.get_settings`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.core.config import AuditSettings, get_settings

# The development signing key is public (it is derived from this sentence); production refuses it.
DEV_SIGNING_SEED = hashlib.sha256(b"lethe development audit signing key - public, never for production").digest()
ALGORITHM = "Ed25519"


def hmac_key_id(key: str) -> str:
    return hmac.new(key.encode(), b"lethe-audit-key-id", hashlib.sha256).hexdigest()[:16]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


def public_key_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """Empty: the development key. A PEM block (PKCS#8), or base64 of the 32-byte seed."""
    text = text.strip()
    if not text:
        return Ed25519PrivateKey.from_private_bytes(DEV_SIGNING_SEED)
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the audit signing key must be an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError("the audit signing key is neither PEM nor base64") from exc
    if len(seed) != 32:
        raise ValueError(f"the audit signing key must be a 32-byte Ed25519 seed, got {len(seed)} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(text: str) -> Ed25519PublicKey:
    """A PEM public key, base64 of the 32 raw bytes, or the JSON answer of ``/v1/audit/public-key``."""
    text = text.strip()
    if text.startswith("{"):
        text = str(json.loads(text)["public_key_pem"]).strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the public key is not an Ed25519 key")
        return key
    raw = base64.b64decode(text, validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def new_signing_seed_b64() -> str:
    """A fresh signing key (base64 seed), for embedded mode and for operators' key generation."""
    key = Ed25519PrivateKey.generate()
    return base64.b64encode(key.private_bytes_raw()).decode()


def canonical_time(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def checkpoint_message(seq: int, head: str, at: str, key_id: str) -> bytes:
    doc = {"seq": seq, "head": head, "at": at, "key_id": key_id}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class AuditKeys:
    current_hmac_id: str
    hmac_keys: dict[str, bytes]
    signing_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_settings(cls, audit: AuditSettings) -> "AuditKeys":
        keys = {hmac_key_id(k): k.encode() for k in audit.hmac_previous_keys}
        keys[hmac_key_id(audit.hmac_key)] = audit.hmac_key.encode()
        return cls(hmac_key_id(audit.hmac_key), keys, load_private_key(audit.signing_key))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def signing_key_id(self) -> str:
        return public_key_id(self.public_key)

    def link(self, key_id: str, prev_hash: str, body: bytes) -> str:
        return hmac.new(self.hmac_keys[key_id], prev_hash.encode() + body, hashlib.sha256).hexdigest()

    def sign(self, seq: int, head: str, at: str) -> tuple[str, str]:
        """(key id, base64 signature) of a checkpoint."""
        key_id = self.signing_key_id
        sig = self.signing_key.sign(checkpoint_message(seq, head, at, key_id))
        return key_id, base64.b64encode(sig).decode()


def checkpoint_problem(checkpoint: dict, public: Ed25519PublicKey) -> str | None:
    """Why ``checkpoint`` (seq, head, at, key_id, signature) is not a genuine checkpoint of the
    holder of ``public``; ``None`` when it is."""
    try:
        seq, head, at, key_id = int(checkpoint["seq"]), str(checkpoint["head"]), str(checkpoint["at"]), str(checkpoint["key_id"])
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed checkpoint: {exc}"
    expected_id = public_key_id(public)
    if key_id != expected_id:
        return f"checkpoint is signed by key {key_id}, but the public key given is {expected_id} (signed by another key)"
    try:
        public.verify(signature, checkpoint_message(seq, head, at, key_id))
    except InvalidSignature:
        return "checkpoint signature does not verify with the public key (forged or altered checkpoint)"
    return None


_configured: AuditKeys | None = None


def configure(audit: AuditSettings) -> AuditKeys:
    global _configured
    _configured = AuditKeys.from_settings(audit)
    return _configured


def current() -> AuditKeys:
    if _configured is None:
        return configure(get_settings().audit)
    return _configured
