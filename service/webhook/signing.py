"""Standard Webhooks signatures (https://www.standardwebhooks.com) and sealing of secrets.

``webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>``
where the key is the base64-decoded part of the secret after ``whsec_``. Checked against the
specification's published test vector in ``tests/service/webhook/test_signing.py``.

Secrets are kept *sealed* (Fernet: AES-128-CBC + HMAC) under a key derived from the server
secret, because every delivery must be signed with the secret itself; rotating
``security.secret_key`` therefore requires re-creating subscriptions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), to_sign, hashlib.sha256).digest()).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def _fernet(server_secret: str) -> Fernet:
    digest = hashlib.sha256(b"lethe-webhook-secrets\x00" + server_secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(server_secret: str, secret: str) -> str:
    return _fernet(server_secret).encrypt(secret.encode()).decode()


def unseal(server_secret: str, sealed: str) -> str:
    return _fernet(server_secret).decrypt(sealed.encode()).decode()
