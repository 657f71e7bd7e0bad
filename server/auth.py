"""Authentication: who a connection is, from a JWT in the CONNECT auth, or a guest identity.

Tokens are verified per namespace (signature, ``exp``, ``nbf``, audience, issuer) against the
configured key set; the ``kid`` header picks the key, so keys can be rotated by adding the new
one before tokens signed with it appear. Claims used: ``sub`` (the user id, required), ``name``,
``namespaces`` (list; absent means all), ``rooms`` (list of room-name prefixes; absent means all),
``role``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import jwt

from .config import AuthConfig

GUEST_ID = re.compile(r"^guest-[A-Za-z0-9]{8,32}$")


class AuthError(Exception):
    """Authentication failed; the message is sent to the client as the connect error."""

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Identity:
    user: str
    name: str
    guest: bool
    expires: float | None = None
    namespaces: list[str] | None = None
    rooms: list[str] | None = None
    role: str = "user"
    # When its credential was issued (a token's iat, a guest token's time; None: unknown),
    # so a revocation also covers a session recovered without presenting it again.
    issued: float | None = None

    def may_use_room(self, room: str) -> bool:
        return self.rooms is None or any(room.startswith(prefix) for prefix in self.rooms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> "Identity | None":
        if not isinstance(value, dict) or not isinstance(value.get("user"), str):
            return None
        try:
            return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})
        except TypeError:
            return None


class Authenticator:
    """Verifies tokens and makes guest identities.

    :param config: the ``[auth]`` section.
    """

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._keys = {k.kid: k for k in config.keys}
        self.revoked: dict[str, float] = {}

    def requires_token(self, namespace: str) -> bool:
        return namespace in self.config.required

    def verify(self, token: Any, namespace: str) -> Identity:
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise AuthError("token must be a non-empty string", "invalid_token")
        if not self._keys:
            raise AuthError("this server accepts no tokens (no keys configured)", "invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token", "invalid_token") from None
        key = self._keys.get(header.get("kid") or "") or (
            next(iter(self._keys.values())) if len(self._keys) == 1 and not header.get("kid") else None)
        if key is None:
            raise AuthError("unknown key id", "invalid_token")
        options = {"require": ["exp", "sub"], "verify_aud": bool(self.config.audience)}
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm], options=options,
                                audience=self.config.audience or None, issuer=self.config.issuer or None,
                                leeway=self.config.leeway)
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", "token_expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid", "invalid_token") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience mismatch", "invalid_token") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc.__class__.__name__}", "invalid_token") from None
        identity = self._identity(claims)
        if identity.namespaces is not None and namespace not in identity.namespaces:
            raise AuthError(f"token does not allow namespace {namespace}", "forbidden")
        issued = claims.get("iat")
        identity.issued = float(issued) if isinstance(issued, (int, float)) and not isinstance(issued, bool) else None
        if self.is_revoked(identity):
            raise AuthError("token revoked", "token_revoked")
        return identity

    def is_revoked(self, identity: Identity) -> bool:
        """Whether ``identity``'s credential was issued before its user was revoked."""
        revoked_at = self.revoked.get(identity.user)
        return revoked_at is not None and (identity.issued is None or identity.issued <= revoked_at)

    def still_valid(self, identity: Identity) -> bool:
        """Whether a saved identity may be restored without its credential: not revoked since,
        and its token (if it has one that expires) not expired."""
        if self.is_revoked(identity):
            return False
        return identity.expires is None or identity.expires + self.config.leeway >= time.time()

    @staticmethod
    def _identity(claims: Mapping[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("token subject must be a non-empty string", "invalid_token")
        name = claims.get("name") if isinstance(claims.get("name"), str) else sub
        lists = {}
        for claim in ("namespaces", "rooms"):
            value = claims.get(claim)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise AuthError(f"claim {claim} must be a list of strings", "invalid_token")
            lists[claim] = value
        role = claims.get("role") if isinstance(claims.get("role"), str) else "user"
        return Identity(user=sub, name=name[:64], guest=False, expires=float(claims["exp"]),
                        namespaces=lists["namespaces"], rooms=lists["rooms"], role=role)

    def guest(self, requested: Any = None) -> Identity:
        """A guest identity; a guest may keep the id it was given before (it proves nothing)."""
        if isinstance(requested, str) and GUEST_ID.match(requested):
            user = requested
        else:
            user = "guest-" + secrets.token_hex(6)
        return Identity(user=user, name=user, guest=True, issued=time.time())

    def authenticate(self, namespace: str, auth: Mapping[str, Any] | None) -> Identity:
        """The identity for a CONNECT with payload ``auth`` to ``namespace``; raises AuthError."""
        auth = auth or {}
        token = auth.get("token")
        if token is not None:
            return self.verify(token, namespace)
        if self.requires_token(namespace) or not self.config.guests:
            raise AuthError("a token is required", "token_required")
        return self.guest(auth.get("guest"))

    def revoke(self, user: str) -> None:
        """Tokens of ``user`` issued up to now stop working."""
        self.revoked[user] = time.time()
