"""Subject keys: HMAC-SHA256(server secret, subject_id).

The only form of a subject id that outlives its deletion request, and the only one in logs.
(Bearer tokens belong to their domain: :mod:`service.client.tokens`.)
"""

from __future__ import annotations

import hashlib
import hmac


def subject_key(secret: str, subject_id: str) -> str:
    return hmac.new(secret.encode(), subject_id.encode("utf-8"), hashlib.sha256).hexdigest()
