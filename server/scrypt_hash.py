"""Secrets stored as scrypt hashes: operator passwords (``admin.password_hash``) and server API
keys (``[api] keys`` ``key_hash``) share one format, ``scrypt$<salt hex>$<hash hex>``."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def scrypt_hash(secret: str, salt: bytes | None = None) -> str:
    """The stored form of ``secret``.

    :param salt: 16 random bytes when not given (given only to re-derive a stored hash).
    """
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def scrypt_matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (compared in constant time); False for a
    malformed ``stored``. About 45 ms of CPU: call it off the event loop."""
    try:
        scheme, salt, _ = stored.split("$")
        if scheme != "scrypt":
            return False
        return hmac.compare_digest(scrypt_hash(secret, bytes.fromhex(salt)), stored)
    except ValueError:
        return False
