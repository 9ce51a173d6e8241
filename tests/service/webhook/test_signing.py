"""Standard Webhooks signatures against the specification's published test vector, and the
verification a receiver does (written from the specification, not from our signer)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from service.webhook import signing

# The vector of the Standard Webhooks reference libraries (tests of the Python library).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, as the specification states it: HMAC-SHA256 keyed with the base64
    decoded secret over ``id.timestamp.body``; any of the space-separated ``v1,`` signatures."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig.split(",", 1) == ["v1", expected] for sig in headers["webhook-signature"].split(" "))


def test_sign_matches_the_published_vector() -> None:
    assert signing.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verifier_accepts_the_vector_and_rejects_a_changed_byte() -> None:
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIGNATURE}
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY)
    assert not verify(VECTOR_SECRET, headers, VECTOR_BODY.replace(b"2", b"3", 1))
    assert not verify(VECTOR_SECRET, headers | {"webhook-timestamp": str(VECTOR_TS + 1)}, VECTOR_BODY)


def test_new_secrets_are_random_24_bytes_and_seal_round_trips() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a != b and a.startswith("whsec_") and len(base64.b64decode(a[6:])) == 24
    sealed = signing.seal("server-secret", a)
    assert a not in sealed and signing.unseal("server-secret", sealed) == a
    with pytest.raises(Exception):
        signing.unseal("another-server-secret", sealed)


def test_the_readme_snippet_verifies_the_published_vector() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    code = re.search(r"```python\n(import base64, hashlib, hmac, time\n.*?)```", readme, re.S)
    assert code, "the README's verification snippet is missing"
    ns: dict = {}
    exec(code.group(1), ns)  # noqa: S102 - our own README
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": "v2,x " + VECTOR_SIGNATURE}
    ns["verify"](VECTOR_SECRET, headers, VECTOR_BODY, tolerance_s=10**10)
    with pytest.raises(ValueError):
        ns["verify"](VECTOR_SECRET, headers, VECTOR_BODY + b" ", tolerance_s=10**10)
    with pytest.raises(ValueError):
        ns["verify"](VECTOR_SECRET, headers, VECTOR_BODY)  # 2021: stale
