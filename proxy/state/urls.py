"""The `state:` URLs: checked strictly when routes.yaml is read, shown without their password.

Pure functions (no driver imported), so `modelway check` and the config reader stay light.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss")
DATABASE_SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
REDIS_TLS_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
DATABASE_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "application_name")


def redis_problems(url: str) -> list[str]:
    """Why `url` is not a Redis URL Modelway accepts (empty when it is)."""
    parts, problems = _split(url, REDIS_SCHEMES)
    if parts is None:
        return problems
    db = parts.path.lstrip("/")
    if db and not (db.isdigit() and parts.path.count("/") == 1):
        problems.append(f"the path must be a database number such as /0, got {parts.path!r}")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in REDIS_TLS_PARAMS:
            problems.append(f"unknown URL parameter {name!r}; allowed: {', '.join(REDIS_TLS_PARAMS)}")
        elif parts.scheme != "rediss":
            problems.append(f"URL parameter {name!r} needs a rediss:// (TLS) URL")
    return problems


def database_problems(url: str) -> list[str]:
    """Why `url` is not a PostgreSQL URL Modelway accepts (empty when it is)."""
    parts, problems = _split(url, DATABASE_SCHEMES)
    if parts is None:
        return problems
    if not parts.path.strip("/") or parts.path.count("/") != 1:
        problems.append("needs the database name as its path, e.g. postgresql://user@host:5432/modelway")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in DATABASE_PARAMS:
            problems.append(f"unknown URL parameter {name!r}; allowed: {', '.join(DATABASE_PARAMS)}")
        elif name == "sslmode" and value not in SSLMODES:
            problems.append(f"sslmode must be one of {', '.join(SSLMODES)}, got {value!r}")
    return problems


def _split(url: str, schemes: tuple[str, ...]):
    try:
        parts = urlsplit(url.strip())
        parts.port          # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        return None, [f"is not a valid URL ({exc})"]
    if parts.scheme not in schemes:
        return None, [f"must start with {' or '.join(s + '://' for s in schemes)}"
                      + (f", got {parts.scheme}://" if parts.scheme else "")]
    if not parts.hostname:
        return None, ["needs a host, e.g. " + schemes[0] + "://127.0.0.1"]
    if parts.fragment:
        return None, ["must not have a #fragment"]
    return parts, []


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for logs and `modelway check`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
