"""OpenDSR status callbacks: the body, the status mapping and the RSA-SHA256 signature.

Lethe's request statuses map onto OpenDSR's four: ``received``, ``awaiting_approval`` and
``queued`` → ``pending``; ``processing`` and ``failed`` (retryable by an operator, so not
final) → ``in_progress``; ``completed`` → ``completed``; ``cancelled`` and ``denied`` (the
processor refused it; the reason is in Lethe's own API) → ``cancelled``.

The signing key is ``opendsr.signing_key`` (PEM) or, outside production, a 2048-bit RSA key
generated once into ``opendsr.key_file`` (created exclusively, so processes sharing the file agree
on one key)."""

from __future__ import annotations

import base64
import datetime as dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from service.core.config import Environment, Settings
from service.core.errors import ProblemError
from service.models import OpenDsrRequest

API_VERSION = "1.0"
STATUS_MAP = {
    "received": "pending",
    "awaiting_approval": "pending",
    "queued": "pending",
    "processing": "in_progress",
    "failed": "in_progress",
    "completed": "completed",
    "cancelled": "cancelled",
    "denied": "cancelled",
}


def opendsr_status(status: str) -> str:
    return STATUS_MAP[status]


def body(od: OpenDsrRequest, data: dict[str, Any], url: str) -> dict[str, Any]:
    return {
        "api_version": API_VERSION,
        "controller_id": str(od.client_id),
        "expected_completion_time": data.get("due_at"),
        "status_callback_url": url,
        "subject_request_id": str(od.subject_request_id),
        "request_status": opendsr_status(data["status"]),
    }


@lru_cache(maxsize=4)
def _key_from(pem: str, key_file: str) -> rsa.RSAPrivateKey:
    if pem.strip():
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    else:
        path = Path(key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            data = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except FileExistsError:
                pass  # another process made it first: use that one
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("opendsr.signing_key must be an RSA private key")
    return key


class OpenDsrNotConfigured(ProblemError):
    status, type, title = 503, "opendsr-not-configured", "OpenDSR signing is not configured"


def signing_key(settings: Settings) -> rsa.RSAPrivateKey:
    """In production the key must come from settings: processes on different machines would each
    generate their own, and a controller could not verify what another signed."""
    if settings.environment == Environment.production and not settings.opendsr.signing_key.strip():
        raise OpenDsrNotConfigured("Set LETHE_OPENDSR__SIGNING_KEY (an RSA private key, PEM) to use the OpenDSR endpoints")
    return _key_from(settings.opendsr.signing_key, str(settings.opendsr.key_file))


def sign(settings: Settings, raw: bytes) -> str:
    """Base64 of the RSA-SHA256 (PKCS#1 v1.5) signature of the raw body."""
    return base64.b64encode(signing_key(settings).sign(raw, padding.PKCS1v15(), hashes.SHA256())).decode()


def headers(settings: Settings, raw: bytes) -> dict[str, str]:
    sig, domain = sign(settings, raw), settings.opendsr.processor_domain
    # The OpenGDPR names too: the specification asks processors to keep honouring them.
    return {"X-OpenDSR-Signature": sig, "X-OpenDSR-Processor-Domain": domain,
            "X-OpenGDPR-Signature": sig, "X-OpenGDPR-Processor-Domain": domain}


def certificate_pem(settings: Settings) -> str:
    if settings.opendsr.certificate.strip():
        return settings.opendsr.certificate
    signing_key(settings)  # the production check
    return _self_signed(settings.opendsr.signing_key, str(settings.opendsr.key_file), settings.opendsr.processor_domain)


@lru_cache(maxsize=4)
def _self_signed(pem: str, key_file: str, domain: str) -> str:
    key = _key_from(pem, key_file)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()
