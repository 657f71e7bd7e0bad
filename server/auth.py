"""Authentication: who a connection is, from a JWT in the CONNECT auth, or a guest identity.

Tokens are verified per namespace (signature, ``exp``, ``nbf``, audience, issuer) against the
configured key set; the ``kid`` header picks the key, so keys can be rotated by adding the new
one before tokens signed with it appear. Claims used: ``sub`` (the user id, required), ``name``,
``namespaces`` (list; absent means all), ``rooms`` (list of room-name prefixes; absent means all),
``role``.

Guests: a guest id is public (member lists show it), so naming one proves nothing. The server
issues each guest a guest token, ``<id>.<issued ms>.<HMAC-SHA256>`` signed with the guest
secret, and only that token keeps the id across connections. The nodes of one deployment share
the secret: ``auth.guest_secret``, else one created once in Redis, else (embedded mode) one per
process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

import jwt

from . import randomness
from .config import AuthConfig

GUEST_ID = re.compile(r"^guest-[A-Za-z0-9]{8,32}$")
GUEST_TOKEN = re.compile(r"^(guest-[A-Za-z0-9]{8,32})\.([0-9]{1,15})\.([A-Za-z0-9_-]{43})$")
MAX_NAME = 32
# Unicode categories a display name may not hold: control and format characters (a right-to-left
# override or a zero-width space would make one name look like another), line and paragraph
# separators, surrogates, private-use and unassigned code points.
FORBIDDEN_IN_NAME = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


class AuthError(Exception):
    """Authentication failed; the message is sent to the client as the connect error."""

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)  # one per connected socket: no instance dict
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
    # Why the guest credential of the CONNECT was not honoured (None: there was none, or it
    # was), so the client can say why it has a new guest id rather than ignore it silently.
    notice: str | None = None

    def may_use_room(self, room: str) -> bool:
        return self.rooms is None or any(room.startswith(prefix) for prefix in self.rooms)

    def to_dict(self) -> dict[str, Any]:
        # As dataclasses.asdict gives it (the lists copied), without its recursive deep copy:
        # one per connect, and it cost about 50 Python calls.
        return {"user": self.user, "name": self.name, "guest": self.guest, "expires": self.expires,
                "namespaces": None if self.namespaces is None else list(self.namespaces),
                "rooms": None if self.rooms is None else list(self.rooms), "role": self.role,
                "issued": self.issued, "notice": self.notice}

    @classmethod
    def from_dict(cls, value: Any) -> "Identity | None":
        if not isinstance(value, dict) or not isinstance(value.get("user"), str):
            return None
        try:
            return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})
        except TypeError:
            return None


def display_name(value: Any) -> str | None:
    """The display name a guest picked (``auth.name``), trimmed; None when it picked none.

    :param value: the ``name`` of the CONNECT auth.
    :raises AuthError: ``invalid_name``, saying what is wrong: not a string, blank, longer than
        ``MAX_NAME`` characters, holding a control or invisible character, or looking like a
        guest id (``guest-…``, which would pass for another guest).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise AuthError("name must be a string", "invalid_name")
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise AuthError("name must not be blank", "invalid_name")
    if len(name) > MAX_NAME:
        raise AuthError(f"name is limited to {MAX_NAME} characters (got {len(name)})", "invalid_name")
    bad = next((c for c in name if unicodedata.category(c) in FORBIDDEN_IN_NAME), None)
    if bad is not None:
        raise AuthError(f"name must not hold control or invisible characters (U+{ord(bad):04X})", "invalid_name")
    if name.lower().startswith("guest-"):
        raise AuthError("name must not start with guest- (it would pass for a guest id)", "invalid_name")
    return name


class Authenticator:
    """Verifies tokens and makes guest identities.

    :param config: the ``[auth]`` section.
    :param node_tag: this node's tag (``server.cluster.new_node_tag``), which starts every guest
        id minted here, so the guest's user room routes to this node (realtime_channels.routes:
        its new sockets need no subscription of their own); "" for plain ids.
    """

    def __init__(self, config: AuthConfig, node_tag: str = "") -> None:
        self.config = config
        self.node_tag = node_tag
        self._keys = {k.kid: k for k in config.keys}
        self.revoked: dict[str, float] = {}
        # Until start() picks the deployment's secret, a per-process one (embedded mode's).
        self._guest_key = config.guest_secret.encode() or secrets.token_bytes(32)

    async def start(self, redis: Any = None, prefix: str = "rt") -> None:
        """Pick the guest secret: ``auth.guest_secret`` when set; else, with Redis, the one the
        first node created (SET NX), so every node verifies every node's guest tokens.

        :param redis: the shared Redis client (None: embedded mode, the per-process secret).
        :param prefix: the deployment's key prefix.
        """
        if self.config.guest_secret or redis is None:
            return
        key = f"{prefix}:guest-secret"
        await redis.set(key, secrets.token_bytes(32), nx=True)
        shared = await redis.get(key)
        if isinstance(shared, bytes) and len(shared) >= 32:
            self._guest_key = shared

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

    def guest(self, guest_token: Any = None, name: str | None = None, guest_id: Any = None) -> Identity:
        """A guest identity: the one ``guest_token`` (issued by :meth:`guest_token`) proves, or a
        new guest id when it proves nothing (absent, forged, signed with another secret, revoked);
        then ``notice`` says why the credential given was not honoured.

        :param guest_token: the ``guestToken`` of the CONNECT auth.
        :param name: the display name the guest picked (already checked by :func:`display_name`);
                     None: its guest id is its name.
        :param guest_id: the ``guest`` of the CONNECT auth (a bare guest id, which proves nothing).
        """
        notice = None
        if guest_token is not None:
            match = GUEST_TOKEN.match(guest_token) if isinstance(guest_token, str) and len(guest_token) <= 128 \
                else None
            if match is None:
                notice = ("the guest token is malformed (expected guest-<id>.<time>.<signature>, "
                          "as whoami gives it)")
            elif not hmac.compare_digest(match[3], self._sign(match[1], match[2])):
                notice = "the guest token was not issued by this deployment (forged, or its guest secret changed)"
            else:
                identity = Identity(user=match[1], name=name or match[1], guest=True, issued=int(match[2]) / 1000)
                if not self.is_revoked(identity):
                    return identity
                notice = "the guest token was revoked by an operator"
        elif guest_id is not None:
            notice = ("a guest id alone proves nothing (member lists show it): keep a guest id with "
                      "the guestToken whoami gives" if isinstance(guest_id, str) and GUEST_ID.match(guest_id)
                      else "not a guest id (guest- and 8-32 letters or digits); and a guest id alone proves "
                           "nothing: keep one with the guestToken whoami gives")
        user = "guest-" + self.node_tag + randomness.token_hex(6)
        # Whole milliseconds, as in the token, so the token says exactly this issue time.
        return Identity(user=user, name=name or user, guest=True, issued=int(time.time() * 1000) / 1000,
                        notice=notice and f"{notice}; you are a new guest, {user}")

    def guest_token(self, identity: Identity) -> str | None:
        """The guest token that keeps ``identity``'s guest id on a later connect (None: not a guest)."""
        if not identity.guest or identity.issued is None:
            return None
        issued = str(round(identity.issued * 1000))
        return f"{identity.user}.{issued}.{self._sign(identity.user, issued)}"

    def _sign(self, user: str, issued: str) -> str:
        digest = hmac.new(self._guest_key, f"{user}.{issued}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def authenticate(self, namespace: str, auth: Mapping[str, Any] | None) -> Identity:
        """The identity for a CONNECT with payload ``auth`` to ``namespace``; raises AuthError."""
        auth = auth or {}
        token = auth.get("token")
        if token is not None:
            return self.verify(token, namespace)
        if self.requires_token(namespace) or not self.config.guests:
            raise AuthError("a token is required", "token_required")
        return self.guest(auth.get("guestToken"), display_name(auth.get("name")), auth.get("guest"))

    def revoke(self, user: str) -> None:
        """Tokens of ``user`` issued up to now stop working."""
        self.revoked[user] = time.time()
