"""routes.yaml -> frozen dataclasses. Unknown fields, wrong types and dangling references are
errors naming the YAML path and line; `load_config` collects them all before failing."""
from __future__ import annotations

import difflib
import hashlib
import os
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from proxy.yamlsrc import Path, Problem, Source, interpolate

CAPABILITIES = ("vision", "tools", "structured_outputs", "reasoning", "prompt_caching", "pdf", "audio")
BUILTIN_MIDDLEWARES = ("access_log", "auth", "ratelimit", "presets", "cache", "accounting")
DEFAULT_MIDDLEWARES = ("access_log", "auth", "ratelimit", "presets", "cache", "accounting")
RETRY_ON = (429, 500, 502, 503, 504, 529)   # upstream statuses retried (then the next target)


class ConfigError(Exception):
    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.format(filename) for p in problems))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: str = "./var"
    max_body_mb: float = 32.0
    max_json_depth: int = 64
    drain_seconds: float = 30.0
    watch_config: bool = False
    body_timeout: float = 30.0
    header_timeout: float = 10.0      # a request's headers must be in within this
    keepalive_timeout: float = 75.0   # an idle keep-alive connection is closed after this
    max_connections: int = 4096       # per worker; more are answered 503 and closed
    sse_ping_seconds: float = 15.0    # `: ping` comments on a silent stream this often (0: none)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None       # the variable named in ${...}, for messages
    disabled_reason: str | None = None   # set when the key variable is unset
    timeouts: Timeouts = Timeouts()
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    max_connections: int = 256
    max_response_mb: float = 16.0        # a non-streamed upstream reply, decompressed

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Pricing:
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None

    @property
    def cached_input_price(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_write_price(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    def public(self) -> dict:
        """OpenRouter-style per-token USD strings for /v1/models."""
        per = lambda v: f"{v / 1_000_000:.10f}".rstrip("0").rstrip(".") or "0"  # noqa: E731
        return {"prompt": per(self.input), "completion": per(self.output),
                "input_cache_read": per(self.cached_input_price),
                "input_cache_write": per(self.cache_write_price),
                "per_million": {"input": self.input, "output": self.output,
                                "cached_input": self.cached_input_price,
                                "cache_write": self.cache_write_price}}


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    targets: tuple[Target, ...]
    strategy: str = "fallback"
    pricing: Pricing = Pricing()
    context_length: int | None = None
    capabilities: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    auto_cache: bool = False
    cache: bool | None = None            # None: follow the global cache setting
    max_tokens_default: int | None = None
    retries: int = 2
    retry_on: tuple[int, ...] = RETRY_ON
    cooldown_seconds: float = 30.0       # how long a failing target is skipped
    cooldown_after: int = 5              # consecutive failed requests that start a cooldown
    owned_by: str | None = None

    @property
    def wildcard(self) -> bool:
        return self.name.endswith("*")


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    model: str               # "any" for an Any Model preset
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    keys: tuple[str, ...] | None = None   # labels (or key ids) that may use it; None = all


@dataclass(frozen=True, slots=True)
class StaticKey:
    label: str
    sha256: str
    allowed_models: tuple[str, ...] = ()
    minute_limit: int | None = None
    daily_limit: float | None = None
    balance: float | None = None
    max_concurrent: int | None = None
    expires_at: float | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    ttl: float = 3600.0
    size_limit_mb: float = 1024.0
    shared: bool = False


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    retention_days: float = 30.0          # stored responses (POST /v1/responses, store: true)


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    retention_days: int | None = 90      # whole UTC days of rows kept before today; None: all


@dataclass(frozen=True, slots=True)
class StateConfig:
    """`state:` — the engines several nodes share; absent (both None) is the embedded mode."""
    redis: str | None = field(default=None, repr=False)      # redis:// or rediss:// URL (may hold a password)
    database: str | None = field(default=None, repr=False)   # postgresql:// URL (may hold a password)
    redis_timeout_ms: float = 50.0        # every Redis call (hot path)
    database_timeout_ms: float = 1000.0   # every PostgreSQL call
    lease_seconds: float = 30.0           # a dead node's requests in flight / reservations outlive it this long

    @property
    def shared(self) -> bool:
        return bool(self.redis or self.database)


@dataclass(frozen=True, slots=True)
class MiddlewareSpec:
    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    version: str
    server: ServerConfig
    middlewares: tuple[MiddlewareSpec, ...]
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelRoute]
    presets: Mapping[str, Preset]
    keys: tuple[StaticKey, ...]
    management_keys: tuple[StaticKey, ...]
    cache: CacheConfig
    auth_mode: str = "keys"
    warnings: tuple[str, ...] = ()
    responses: ResponsesConfig = ResponsesConfig()
    ledger: LedgerConfig = LedgerConfig()
    state: StateConfig = StateConfig()


# --- reading --------------------------------------------------------------------------

INT, NUM, STR, BOOL, LIST, MAP = "int", "number", "string", "boolean", "list", "mapping"
COUNT, MONEY, POSITIVE = "int >= 1", "number >= 0", "number > 0"   # kinds with a lower bound
NUMBERS = (NUM, MONEY, POSITIVE)   # read as float


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A finite number: YAML's .nan and .inf (and ints too big for a float) are refused."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= sys.float_info.max


_CHECK = {
    INT: _is_int,
    NUM: _is_num,
    COUNT: lambda v: _is_int(v) and v >= 1,
    MONEY: lambda v: _is_num(v) and v >= 0,
    POSITIVE: lambda v: _is_num(v) and v > 0,
    STR: lambda v: isinstance(v, str),
    BOOL: lambda v: isinstance(v, bool),
    LIST: lambda v: isinstance(v, list),
    MAP: lambda v: isinstance(v, dict),
}


class _Reader:
    def __init__(self, src: Source, env: Mapping[str, str]):
        self.src = src
        self.env = env

    def problem(self, path: Path, message: str) -> None:
        self.src.problem(path, message)

    def check(self, value, kind: str, path: Path, nullable: bool = False) -> bool:
        if value is None and nullable:
            return True
        if not _CHECK[kind](value):
            article = "an" if kind[0] in "aeiou" else "a"
            self.problem(path, f"must be {article} {kind}, got {type(value).__name__} {value!r}")
            return False
        return True

    def fields(self, value, path: Path, spec: dict[str, tuple], required: tuple = (),
               raw: tuple = ()) -> dict | None:
        """Check a mapping against spec {name: (kind, default[, nullable])}; returns the values."""
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, got {type(value).__name__}")
            return None
        for k in value:
            if k not in spec:
                close = difflib.get_close_matches(str(k), list(spec), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(spec)}"
                self.problem(path + (k,), f"unknown field {k!r}{hint}")
        out = {}
        for name, (kind, default, *rest) in spec.items():
            if name not in value:
                if name in required:
                    self.problem(path, f"missing required field {name!r}")
                out[name] = default
                continue
            v = value[name]
            if isinstance(v, str) and name not in raw:
                v = self.interp(v, path + (name,))
            ok = self.check(v, kind, path + (name,), nullable=bool(rest and rest[0]))
            out[name] = (float(v) if kind in NUMBERS and v is not None else v) if ok else default
        return out

    def interp(self, v: str, path: Path) -> str:
        text, missing = interpolate(v, self.env)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        return text


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    with open(path, encoding="utf-8") as fh:
        try:
            text = fh.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(path, [Problem("", None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return parse_config(text, path, env)


def parse_config(text: str, filename: str = "routes.yaml", env: Mapping[str, str] | None = None) -> Config:
    from proxy import configparts
    src = Source(text)
    if src.data is None:
        raise ConfigError(filename, src.problems)
    r = _Reader(src, os.environ if env is None else env)
    cfg = configparts.build(r, src.data, filename, hashlib.sha256(text.encode()).hexdigest()[:12])
    if src.problems:
        raise ConfigError(filename, sorted(src.problems, key=lambda p: p.line or 0))
    return cfg
