"""Configuration: one source (``config.toml``), overridden by environment variables.

Every value is validated at start-up. A mistake raises :class:`ConfigError` whose
message names the key, where the value came from and what is wrong, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import assets

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(Exception):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "text"
    cors_origins: tuple[str, ...] = ()
    parser: str = "json"
    transports: tuple[str, ...] = ("polling", "websocket")
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    connect_timeout: float = 45.0
    shutdown_timeout: float = 10.0
    node_id: str = ""
    websocket_compression: bool = False
    lean_websocket: bool = True
    bench_namespace: bool = False
    pages: bool = True
    assets_dir: str = ""
    bad_request_log_interval: float = 10.0
    advertise_address: str = ""


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""
    key_prefix: str = "rt"
    max_connections: int = 100
    pool_timeout: float = 10.0
    # 0: an ack means the publication reached the master. n > 0: WAIT n after each publish,
    # so an ack means n replicas have it too (no acked event lost in a failover).
    replicas_ack: int = 0
    replicas_ack_timeout: float = 1.0


@dataclass(frozen=True)
class DeliveryConfig:
    durable_namespaces: tuple[str, ...] = ("/chat", "/collab")
    max_disconnection_duration: float = 120.0
    log_max_length: int = 10_000
    log_max_age: float = 3600.0
    dedupe_ttl: float = 300.0
    dedupe_max_reply_bytes: int = 16_384
    dedupe_max_bytes: int = 64 * 1024 * 1024
    direct_retry_interval: float = 5.0
    direct_ttl: float = 3600.0
    direct_max_pending: int = 1000
    presence_ttl: float = 30.0


@dataclass(frozen=True)
class JwtKey:
    kid: str
    algorithm: str
    key: str


@dataclass(frozen=True)
class AuthConfig:
    required: tuple[str, ...] = ()
    guests: bool = True
    audience: str = ""
    issuer: str = ""
    keys: tuple[JwtKey, ...] = ()
    leeway: float = 5.0
    guest_secret: str = ""


@dataclass(frozen=True)
class AdminConfig:
    username: str = "admin"
    password: str = ""
    password_hash: str = ""
    readonly_username: str = ""
    readonly_password: str = ""
    login_attempts: int = 10
    login_lockout: float = 300.0


@dataclass(frozen=True)
class LimitsConfig:
    events_per_second: float = 50.0
    event_burst: int = 100
    max_event_bytes: int = 65_536
    max_rooms_per_socket: int = 100
    max_connections_per_ip: int = 1000
    max_attachments: int = 10
    send_queue_max: int = 1000
    send_queue_max_bytes: int = 4 * 1024 * 1024
    body_timeout: float = 10.0
    max_packets_per_payload: int = 256
    attachment_timeout: float = 10.0
    max_inflight_events: int = 32
    operator_events_per_second: float = 1000.0
    operator_event_burst: int = 2000


@dataclass(frozen=True)
class ApiKey:
    """One server API key: ``name`` appears in logs and metrics; ``key`` (plain) or ``key_hash``
    (``scrypt$<salt>$<hash>``) is the secret, never shown (left out of ``repr``)."""

    name: str
    key: str = field(default="", repr=False)
    key_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class ApiConfig:
    keys: tuple[ApiKey, ...] = ()
    requests_per_second: float = 100.0
    burst: int = 200
    max_body_bytes: int = 1_048_576
    max_batch_commands: int = 100


@dataclass(frozen=True)
class GameConfig:
    tick_rate: float = 20.0
    max_players: int = 4
    inputs_per_second: float = 60.0
    duration: float = 90.0
    win_score: int = 5


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    game: GameConfig = field(default_factory=GameConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    @property
    def node_id(self) -> str:
        return self.server.node_id or f"{socket.gethostname()}-{os.getpid()}"

    def with_overrides(self, **sections: Mapping[str, Any]) -> "Config":
        """Return a copy with some fields of some sections replaced (tests, profiles)."""
        changes = {name: dataclasses.replace(getattr(self, name), **values)
                   for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------- validation

NAMESPACES = ("/chat", "/game", "/collab", "/admin")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _where(key: str, source: str) -> str:
    return f"{key} (from {source})"


def _bool(key: str, source: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{_where(key, source)}: expected true or false, got {value!r}")


def _int(key: str, source: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{_where(key, source)}: expected an integer, got {value!r}")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ConfigError(f"{_where(key, source)}: expected an integer, got {value!r}")
    if not lo <= number <= hi:
        raise ConfigError(f"{_where(key, source)}: must be between {lo} and {hi}, got {number}")
    return number


def _float(key: str, source: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{_where(key, source)}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_where(key, source)}: expected a number, got {value!r}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{_where(key, source)}: must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def _str(key: str, source: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{_where(key, source)}: expected a string, got {value!r}")
    if choices is not None and value.lower() not in choices:
        raise ConfigError(f"{_where(key, source)}: must be one of {', '.join(choices)}, got {value!r}")
    return value.lower() if choices is not None else value


def _str_list(key: str, source: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{_where(key, source)}: expected a list of strings, got {value!r}")
    return tuple(value)


def _origins(key: str, source: str, value: Any) -> tuple[str, ...]:
    origins = _str_list(key, source, value)
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(f"{_where(key, source)}: origin {origin!r} must start with http:// or https:// (or be *)")
    return origins


def _namespaces(key: str, source: str, value: Any) -> tuple[str, ...]:
    names = _str_list(key, source, value)
    for name in names:
        if name not in NAMESPACES:
            raise ConfigError(f"{_where(key, source)}: unknown namespace {name!r} (known: {', '.join(NAMESPACES)})")
    return names


def _host_port(key: str, source: str, value: Any) -> str:
    """``host:port`` or empty."""
    text = _str(key, source, value).strip()
    host, sep, port = text.rpartition(":")
    if text and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise ConfigError(f"{_where(key, source)}: expected host:port, got {text!r}")
    return text


def _redis_url(key: str, source: str, value: Any) -> str:
    """A Redis URL. ``redis+cluster://h1:p1,h2:p2`` (and ``rediss+``/``valkey+``/``valkeys+cluster``)
    names seed nodes of a Redis Cluster: each ``host:port``, database 0 only.
    ``redis+shards://h1:p1,h2:p2[/db]`` (and ``rediss+``/``valkey+``/``valkeys+shards``) names
    independent instances the channels are spread over: each ``host:port`` once, in a fixed order."""
    url = _str(key, source, value).strip()
    schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", "valkey://", "valkeys://",
               "redis+cluster://", "rediss+cluster://", "valkey+cluster://", "valkeys+cluster://",
               "redis+shards://", "rediss+shards://", "valkey+shards://", "valkeys+shards://")
    if url and not url.startswith(schemes):
        raise ConfigError(f"{_where(key, source)}: must start with one of {', '.join(schemes)}, got {url!r}")
    if "+shards://" in url:
        from realtime_channels.sharding import shard_urls

        try:
            shard_urls(url)
        except ValueError as exc:
            raise ConfigError(f"{_where(key, source)}: {exc} (redis+shards://host:port,host:port[,...][/db])") from None
    if "+cluster://" in url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        for seed in parts.netloc.rpartition("@")[2].split(","):
            host, sep, port = seed.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{_where(key, source)}: a cluster URL lists seed nodes as host:port[,host:port...], "
                                  f"got {seed!r}")
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError(f"{_where(key, source)}: a Redis Cluster has only database 0, got {parts.path!r}")
    return url


def _folder(key: str, source: str, value: Any) -> str:
    """A folder path, made absolute now (a relative one is taken from the working directory)."""
    path = _str(key, source, value).strip()
    return str(Path(path).expanduser().absolute()) if path else ""


def _transports(key: str, source: str, value: Any) -> tuple[str, ...]:
    names = _str_list(key, source, value)
    if not names or any(n not in ("polling", "websocket") for n in names):
        raise ConfigError(f"{_where(key, source)}: must be a non-empty list of polling, websocket; got {value!r}")
    return names


def _keys(key: str, source: str, value: Any) -> tuple[JwtKey, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{_where(key, source)}: expected a list of tables with kid, algorithm and key")
    keys = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{_where(where, source)}: expected a table with kid, algorithm and key")
        unknown = set(item) - {"kid", "algorithm", "key", "key_file"}
        if unknown:
            raise ConfigError(f"{_where(where, source)}: unknown field(s) {', '.join(sorted(unknown))}")
        alg = _str(f"{where}.algorithm", source, item.get("algorithm", "HS256"))
        if alg not in ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256"):
            raise ConfigError(f"{_where(where + '.algorithm', source)}: unsupported algorithm {alg!r}")
        material = item.get("key")
        if "key_file" in item:
            path = Path(_str(f"{where}.key_file", source, item["key_file"]))
            try:
                material = path.read_text()
            except OSError as exc:
                raise ConfigError(f"{_where(where + '.key_file', source)}: cannot read {path}: {exc.strerror}") from None
        if not isinstance(material, str) or not material:
            raise ConfigError(f"{_where(where, source)}: needs a non-empty key or key_file")
        if alg.startswith("HS") and len(material.encode()) < 32:
            raise ConfigError(f"{_where(where + '.key', source)}: an HMAC secret must be at least 32 bytes")
        keys.append(JwtKey(kid=_str(f"{where}.kid", source, item.get("kid", "")), algorithm=alg, key=material))
    return tuple(keys)


API_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# RFC 6750 token characters, so a key travels in ``Authorization: Bearer`` unchanged.
API_KEY_TEXT = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
API_KEY_MIN = 24


def _api_key_secret(where: str, source: str, key: str) -> str:
    """A plain API key: checked without ever echoing it (a config error goes to the terminal/logs)."""
    if not isinstance(key, str):
        raise ConfigError(f"{_where(where, source)}: expected a string")
    if len(key) < API_KEY_MIN or len(key) > 256:
        raise ConfigError(f"{_where(where, source)}: must be {API_KEY_MIN} to 256 characters long, "
                          f"got {len(key)}")
    if not API_KEY_TEXT.match(key):
        raise ConfigError(f"{_where(where, source)}: may hold only letters, digits and . _ ~ + / = -")
    return key


def _api_key_hash(where: str, source: str, value: Any) -> str:
    parts = value.split("$") if isinstance(value, str) else []
    if len(parts) != 3 or parts[0] != "scrypt" or not all(re.fullmatch(r"[0-9a-f]+", p) for p in parts[1:]):
        raise ConfigError(f"{_where(where, source)}: expected scrypt$<salt hex>$<hash hex> "
                          f"(make one with: python -m server.api_keys hash)")
    return value


def _api_keys(key: str, source: str, value: Any) -> tuple[ApiKey, ...]:
    """``[{name, key} | {name, key_hash}, ...]``, or (from $API_KEYS) ``"name:key,name2:key2"``.
    Names must be unique (they label logs and metrics), and so must plain keys."""
    if isinstance(value, str):
        items: list[Any] = []
        for i, pair in enumerate(p.strip() for p in value.split(",") if p.strip()):
            name, sep, secret = pair.partition(":")
            if not sep:
                raise ConfigError(f"{_where(key, source)}: entry {i + 1} is not name:key")
            items.append({"name": name.strip(), "key": secret.strip()})
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{_where(key, source)}: expected a list of tables with name and key (or key_hash)")
    keys: list[ApiKey] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{_where(where, source)}: expected a table with name and key (or key_hash)")
        unknown = set(item) - {"name", "key", "key_hash"}
        if unknown:
            raise ConfigError(f"{_where(where, source)}: unknown field(s) {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not API_KEY_NAME.match(name):
            raise ConfigError(f"{_where(where + '.name', source)}: 1-64 characters of letters, digits, _ . -")
        if ("key" in item) == ("key_hash" in item):
            raise ConfigError(f"{_where(where, source)}: set exactly one of key and key_hash")
        secret = _api_key_secret(where + ".key", source, item["key"]) if "key" in item else ""
        digest = _api_key_hash(where + ".key_hash", source, item["key_hash"]) if "key_hash" in item else ""
        for j, other in enumerate(keys):
            if other.name == name:
                raise ConfigError(f"{_where(where + '.name', source)}: the name {name!r} is used twice")
            if secret and other.key == secret:
                raise ConfigError(f"{_where(where + '.key', source)}: the same key as {key}[{j}] ({other.name})")
        keys.append(ApiKey(name=name, key=secret, key_hash=digest))
    return tuple(keys)


Validator = Callable[[str, str, Any], Any]

# key -> validator; every key a section accepts is listed here.
SCHEMA: dict[str, dict[str, Validator]] = {
    "server": {
        "host": lambda k, s, v: _str(k, s, v),
        "port": lambda k, s, v: _int(k, s, v, 0, 65535),
        "log_level": lambda k, s, v: _str(k, s, v, LOG_LEVELS),
        "log_format": lambda k, s, v: _str(k, s, v, ("text", "json")),
        "cors_origins": _origins,
        "parser": lambda k, s, v: _str(k, s, v, ("json", "msgpack")),
        "transports": _transports,
        "ping_interval": lambda k, s, v: _float(k, s, v, 0.05, 3600),
        "ping_timeout": lambda k, s, v: _float(k, s, v, 0.05, 3600),
        "max_payload": lambda k, s, v: _int(k, s, v, 1024, 100_000_000),
        "connect_timeout": lambda k, s, v: _float(k, s, v, 0.1, 3600),
        "shutdown_timeout": lambda k, s, v: _float(k, s, v, 0, 600),
        "node_id": lambda k, s, v: _str(k, s, v),
        "websocket_compression": _bool,
        "lean_websocket": _bool,
        "bench_namespace": _bool,
        "pages": _bool,
        "assets_dir": _folder,
        "bad_request_log_interval": lambda k, s, v: _float(k, s, v, 0, 86400),
        "advertise_address": _host_port,
    },
    "redis": {
        "url": _redis_url,
        "key_prefix": lambda k, s, v: _str(k, s, v),
        "max_connections": lambda k, s, v: _int(k, s, v, 2, 100_000),
        "pool_timeout": lambda k, s, v: _float(k, s, v, 0.1, 600),
        "replicas_ack": lambda k, s, v: _int(k, s, v, 0, 16),
        "replicas_ack_timeout": lambda k, s, v: _float(k, s, v, 0.01, 60),
    },
    "delivery": {
        "durable_namespaces": _namespaces,
        "max_disconnection_duration": lambda k, s, v: _float(k, s, v, 1, 86400),
        "log_max_length": lambda k, s, v: _int(k, s, v, 10, 10_000_000),
        "log_max_age": lambda k, s, v: _float(k, s, v, 1, 30 * 86400),
        "dedupe_ttl": lambda k, s, v: _float(k, s, v, 1, 7 * 86400),
        "dedupe_max_reply_bytes": lambda k, s, v: _int(k, s, v, 64, 100_000_000),
        "dedupe_max_bytes": lambda k, s, v: _int(k, s, v, 65_536, 100_000_000_000),
        "direct_retry_interval": lambda k, s, v: _float(k, s, v, 0.05, 3600),
        "direct_ttl": lambda k, s, v: _float(k, s, v, 1, 30 * 86400),
        "direct_max_pending": lambda k, s, v: _int(k, s, v, 1, 100_000),
        "presence_ttl": lambda k, s, v: _float(k, s, v, 0.5, 3600),
    },
    "auth": {
        "required": lambda k, s, v: _auth_required(k, s, v),
        "guests": _bool,
        "audience": lambda k, s, v: _str(k, s, v),
        "issuer": lambda k, s, v: _str(k, s, v),
        "keys": _keys,
        "leeway": lambda k, s, v: _float(k, s, v, 0, 600),
        "guest_secret": lambda k, s, v: _secret(k, s, v),
    },
    "admin": {
        "username": lambda k, s, v: _str(k, s, v),
        "password": lambda k, s, v: _str(k, s, v),
        "password_hash": lambda k, s, v: _str(k, s, v),
        "readonly_username": lambda k, s, v: _str(k, s, v),
        "readonly_password": lambda k, s, v: _str(k, s, v),
        "login_attempts": lambda k, s, v: _int(k, s, v, 1, 1_000_000),
        "login_lockout": lambda k, s, v: _float(k, s, v, 0.1, 7 * 86400),
    },
    "limits": {
        "events_per_second": lambda k, s, v: _float(k, s, v, 0.1, 1_000_000),
        "event_burst": lambda k, s, v: _int(k, s, v, 1, 1_000_000),
        "max_event_bytes": lambda k, s, v: _int(k, s, v, 64, 100_000_000),
        "max_rooms_per_socket": lambda k, s, v: _int(k, s, v, 1, 100_000),
        "max_connections_per_ip": lambda k, s, v: _int(k, s, v, 1, 10_000_000),
        "max_attachments": lambda k, s, v: _int(k, s, v, 0, 1000),
        "send_queue_max": lambda k, s, v: _int(k, s, v, 10, 10_000_000),
        "send_queue_max_bytes": lambda k, s, v: _int(k, s, v, 65_536, 100_000_000_000),
        "body_timeout": lambda k, s, v: _float(k, s, v, 0.1, 600),
        "max_packets_per_payload": lambda k, s, v: _int(k, s, v, 1, 100_000),
        "attachment_timeout": lambda k, s, v: _float(k, s, v, 0.1, 600),
        "max_inflight_events": lambda k, s, v: _int(k, s, v, 1, 100_000),
        "operator_events_per_second": lambda k, s, v: _float(k, s, v, 0.01, 1_000_000),
        "operator_event_burst": lambda k, s, v: _int(k, s, v, 1, 1_000_000),
    },
    "game": {
        "tick_rate": lambda k, s, v: _float(k, s, v, 1, 240),
        "max_players": lambda k, s, v: _int(k, s, v, 2, 64),
        "inputs_per_second": lambda k, s, v: _float(k, s, v, 1, 1000),
        "duration": lambda k, s, v: _float(k, s, v, 1, 3600),
        "win_score": lambda k, s, v: _int(k, s, v, 1, 1000),
    },
    "api": {
        "keys": _api_keys,
        "requests_per_second": lambda k, s, v: _float(k, s, v, 0.01, 1_000_000),
        "burst": lambda k, s, v: _int(k, s, v, 1, 1_000_000),
        "max_body_bytes": lambda k, s, v: _int(k, s, v, 1024, 100_000_000),
        "max_batch_commands": lambda k, s, v: _int(k, s, v, 1, 10_000),
    },
}


def _secret(key: str, source: str, value: Any) -> str:
    """Empty (then made at start-up) or an HMAC secret of at least 32 bytes."""
    secret = _str(key, source, value)
    if secret and len(secret.encode()) < 32:
        raise ConfigError(f"{_where(key, source)}: a secret must be at least 32 bytes (or empty), "
                          f"got {len(secret.encode())}")
    return secret


def _auth_required(key: str, source: str, value: Any) -> tuple[str, ...]:
    """``true`` means every application namespace; a list names them."""
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in
                                   ("1", "0", "true", "false", "yes", "no", "on", "off", "")):
        return ("/chat", "/game", "/collab") if _bool(key, source, value) else ()
    return _namespaces(key, source, value)


# environment variable -> (section, key)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "HOST": ("server", "host"),
    "PORT": ("server", "port"),
    "LOG_LEVEL": ("server", "log_level"),
    "LOG_FORMAT": ("server", "log_format"),
    "CORS_ORIGINS": ("server", "cors_origins"),
    "PARSER": ("server", "parser"),
    "NODE_ID": ("server", "node_id"),
    "PING_INTERVAL": ("server", "ping_interval"),
    "PING_TIMEOUT": ("server", "ping_timeout"),
    "BENCH_NAMESPACE": ("server", "bench_namespace"),
    "REDIS_URL": ("redis", "url"),
    "REDIS_KEY_PREFIX": ("redis", "key_prefix"),
    "REDIS_MAX_CONNECTIONS": ("redis", "max_connections"),
    "REDIS_REPLICAS_ACK": ("redis", "replicas_ack"),
    "MAX_DISCONNECTION_DURATION": ("delivery", "max_disconnection_duration"),
    "AUTH_REQUIRED": ("auth", "required"),
    "GUEST_SECRET": ("auth", "guest_secret"),
    "ADMIN_USERNAME": ("admin", "username"),
    "ADMIN_PASSWORD": ("admin", "password"),
    "GAME_TICK_RATE": ("game", "tick_rate"),
    "GAME_DURATION": ("game", "duration"),
    "PRESENCE_TTL": ("delivery", "presence_ttl"),
    "DIRECT_RETRY_INTERVAL": ("delivery", "direct_retry_interval"),
    "EVENTS_PER_SECOND": ("limits", "events_per_second"),
    "EVENT_BURST": ("limits", "event_burst"),
    "MAX_CONNECTIONS_PER_IP": ("limits", "max_connections_per_ip"),
    "MAX_INFLIGHT_EVENTS": ("limits", "max_inflight_events"),
    "CONNECT_TIMEOUT": ("server", "connect_timeout"),
    "PAGES": ("server", "pages"),
    "ASSETS_DIR": ("server", "assets_dir"),
    "API_KEYS": ("api", "keys"),
    "ADVERTISE_ADDRESS": ("server", "advertise_address"),
}

SECTION_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}
SECTION_CLASSES = {
    "server": ServerConfig, "redis": RedisConfig, "delivery": DeliveryConfig, "auth": AuthConfig,
    "admin": AdminConfig, "limits": LimitsConfig, "game": GameConfig, "api": ApiConfig,
}


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (default: the repository's ``config.toml``), apply environment overrides, validate.

    :param path: the TOML file; a missing explicit path is an error, a missing default one is not.
    :param environ: the environment to read overrides from (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None
    file_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if file_path.exists():
        try:
            raw = tomllib.loads(file_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{file_path}: cannot be read: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(f"--config {file_path}: no such file")

    sections: dict[str, dict[str, Any]] = {name: {} for name in SCHEMA}
    for section, values in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"[{section}] in {file_path}: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{section} in {file_path}: expected a table [{section}]")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{section}.{key} in {file_path}: unknown key "
                                  f"(known: {', '.join(SCHEMA[section])})")
            sections[section][key] = SCHEMA[section][key](f"{section}.{key}", str(file_path), value)

    for env_name, (section, key) in ENV_OVERRIDES.items():
        if env_name in environ:
            sections[section][key] = SCHEMA[section][key](f"{section}.{key}", f"${env_name}", environ[env_name])

    built = {name: SECTION_CLASSES[name](**values) for name, values in sections.items()}
    config = Config(**built)
    _check_consistency(config, str(file_path))
    if config.server.pages:
        _check_pages(config.server.assets_dir, "$ASSETS_DIR" if "ASSETS_DIR" in environ else str(file_path))
    return config


def _check_consistency(config: Config, source: str) -> None:
    if config.server.ping_timeout > config.server.ping_interval + 3600:
        raise ConfigError(f"server.ping_timeout (from {source}): unreasonably larger than ping_interval")
    if config.auth.required and not config.auth.keys:
        raise ConfigError(f"auth.required (from {source} or $AUTH_REQUIRED): tokens are required for "
                          f"{', '.join(config.auth.required)} but auth.keys is empty, so no token could ever verify")
    if config.admin.password and config.admin.password_hash:
        raise ConfigError(f"admin.password and admin.password_hash (from {source}): set one, not both")
    if config.api.max_batch_commands > config.api.burst:
        raise ConfigError(f"api.max_batch_commands (from {source}): {config.api.max_batch_commands} is more than "
                          f"api.burst ({config.api.burst}); every command of a batch takes a request from the "
                          f"key's allowance, so such a batch could never run")


def _check_pages(assets_dir: str, assets_source: str) -> None:
    """The pages are on: their files must be there, else start-up says what to do (not 404s later).

    :param assets_dir: ``server.assets_dir`` as validated (empty: the repository's node_modules).
    :param assets_source: where ``assets_dir`` came from, for the message.
    """
    backend = "or set server.pages = false ($PAGES=false) to run without pages"
    if not (assets.WEB_DIR / "index.html").is_file():
        raise ConfigError(f"server.pages: the pages are not in {assets.WEB_DIR} (they are served from a "
                          f"checkout of the repository); run from a checkout, {backend}")
    folder = assets.node_modules(assets_dir)
    packages = assets.missing_packages(folder)
    if not packages:
        return
    what = f"the pages' npm packages ({', '.join(packages)}) are missing from {folder}"
    if assets_dir:
        raise ConfigError(f"{_where('server.assets_dir', assets_source)}: {what}: point it at the node_modules "
                          f"that `npm ci` made in a checkout of the repository, {backend}")
    if assets.is_checkout():
        step = (f"run `npm ci` in {assets.ROOT} (`make install` does it), or set server.assets_dir "
                f"($ASSETS_DIR) to a node_modules folder that has them")
    else:
        step = "run `npm ci` in a checkout of the repository and set server.assets_dir ($ASSETS_DIR) to its node_modules"
    raise ConfigError(f"server.pages: {what}: {step}, {backend}")
