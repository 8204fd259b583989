"""`modelway keys ...` and `modelway usage ...`: the key store and the ledger from the shell.
They open the same SQLite file as the running gateway (WAL: safe while it serves), or, when
routes.yaml names `state.database`, the shared PostgreSQL (proxy/state/pg_cli.py)."""
from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import sys

import orjson

from proxy.store.files import private_dir


def _data_dir(args) -> str:
    from proxy.cli import _load_or_exit
    return os.path.abspath(_load_or_exit(args.config).server.data_dir)


def _auth_off(args) -> bool:
    from proxy.cli import _load_or_exit
    return _load_or_exit(args.config).auth_mode == "none"


def _database_url(args) -> str | None:
    """state.database: keys and the ledger live in the shared PostgreSQL, not data_dir."""
    from proxy.cli import _load_or_exit
    return _load_or_exit(args.config).state.database


def _store(args):
    url = _database_url(args)
    if url:
        from proxy.state.pg_cli import PostgresCliKeys   # asyncpg loads only when state.database asks for it
        return PostgresCliKeys(url)
    from proxy.store.db import Database
    from proxy.store.keys import KeyStore
    private_dir(_data_dir(args))
    return KeyStore(Database(_data_dir(args)))


def _close(store) -> None:
    db = getattr(store, "db", None)
    (db or store).close()


def _fields(args) -> dict:
    """The key fields given as options, checked by the HTTP API's rules (InvalidRequest)."""
    from proxy.account import parse_expiry
    from proxy.store.keys import check_fields
    out = {}
    for name in ("label", "minute_limit", "daily_limit", "balance", "max_concurrent"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "allowed_models", None) is not None:
        out["allowed_models"] = [m for m in args.allowed_models.split(",") if m] or None
    if getattr(args, "expires_at", None):
        out["expires_at"] = parse_expiry(args.expires_at, "expires_at")
    return check_fields(out, partial=args.keys_command != "create")


def _print(data) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def cmd_keys(args) -> int:
    if args.keys_command == "hash":
        secret = args.secret if args.secret is not None else (
            sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("key: "))
        if not secret.strip():
            print("modelway: the key is empty; give it as an argument or on standard input", file=sys.stderr)
            return 2
        digest = hashlib.sha256(secret.encode()).hexdigest()
        label = json.dumps(args.label or "my-key")    # a JSON string is a YAML string: any label is safe
        print(f'- {{label: {label}, sha256: "{digest}"}}')
        return 0
    from proxy.errors import GatewayError
    try:
        fields = _fields(args)
    except GatewayError as exc:
        print(f"modelway: {exc.message}", file=sys.stderr)
        return 2
    store = _store(args)
    try:
        if args.keys_command == "create":
            record, secret = store.create(**fields)
            _print({**record, "key": secret})
            print("Store this key now: it is not shown again.", file=sys.stderr)
            if _auth_off(args):
                print(f"warning: auth is off in {args.config} (auth: {{mode: none}}): keys are not "
                      "enforced until it is removed.", file=sys.stderr)
        elif args.keys_command == "list":
            rows = store.list()
            for r in rows:
                print(f"{r['id']:<22} {str(r.get('label')):<20} {r.get('prefix'):<16} "
                      f"usage_today={r.get('usage_today', 0):.6f} balance={r.get('balance')} "
                      f"disabled={bool(r.get('disabled'))}")
            if not rows:
                print("no managed keys")
        elif args.keys_command == "update":
            record = store.update(args.id, **fields,
                                  **({"disabled": args.disable} if args.disable is not None else {}))
            if record is None:
                print(f"no key {args.id}", file=sys.stderr)
                return 1
            _print(record)
        elif args.keys_command == "revoke":
            if not store.revoke(args.id):
                print(f"no key {args.id}", file=sys.stderr)
                return 1
            print(f"revoked {args.id}")
    finally:
        _close(store)
    return 0


def cmd_usage(args) -> int:
    from proxy.account import parse_time
    from proxy.errors import GatewayError
    from proxy.store.db import db_path
    from proxy.store.keys import usd
    from proxy.store.usage import format_usage_table, usage_report
    try:
        since, until = parse_time(args.since, "since"), parse_time(args.until, "until")
    except GatewayError as exc:
        print(f"modelway: {exc.message}", file=sys.stderr)
        return 2
    url = _database_url(args)
    if url:
        from proxy.state.pg_cli import usage_report as shared_usage_report   # as above: only with state.database
        rows = shared_usage_report(url, by=args.by, since=since, until=until, key_id=args.key)
    else:
        path = db_path(_data_dir(args))
        if not os.path.exists(path):
            print("no ledger yet (no request has been served with this data_dir)")
            return 0
        rows = usage_report(path, by=args.by, since=since, until=until, key_id=args.key)
    if args.format == "json":
        _print([{**r, "cost": usd(r["cost"])} for r in rows])
    else:
        print(format_usage_table(rows, args.by))
    return 0


def add_store_commands(sub, with_config) -> None:
    k = with_config(sub.add_parser("keys", help="manage API keys"))
    ks = k.add_subparsers(dest="keys_command", required=True)

    def limits(p):
        p.add_argument("--label")
        p.add_argument("--allowed-models", help="comma-separated names or globs")
        p.add_argument("--minute-limit", type=int)
        p.add_argument("--daily-limit", type=float)
        p.add_argument("--balance", type=float)
        p.add_argument("--max-concurrent", type=int)
        p.add_argument("--expires-at", help="unix seconds, ISO date, or a span like 30d")
        return p

    def config_after(p):
        # `modelway keys create ... --config FILE` as well as `modelway keys --config FILE create ...`
        p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="path to routes.yaml")
        return p

    config_after(limits(ks.add_parser("create", help="create a managed key (shown once)")))
    config_after(ks.add_parser("list", help="list managed keys (masked)"))
    u = config_after(limits(ks.add_parser("update", help="change a managed key")))
    u.add_argument("id")
    u.add_argument("--disable", action="store_true", default=None)
    u.add_argument("--enable", dest="disable", action="store_false")
    r = config_after(ks.add_parser("revoke", help="delete a managed key"))
    r.add_argument("id")
    h = ks.add_parser("hash", help="print the routes.yaml line for a key (reads the key from stdin)")
    h.add_argument("secret", nargs="?")
    h.add_argument("--label")
    k.set_defaults(func=cmd_keys)
    us = with_config(sub.add_parser("usage", help="spend and tokens from the ledger"))
    us.add_argument("--by", choices=("key", "model", "day"), default="model")
    us.add_argument("--since", help="unix seconds, ISO date, or a span like 7d (default: all)")
    us.add_argument("--until")
    us.add_argument("--key", help="only this key id")
    us.add_argument("--format", choices=("table", "json"), default="table")
    us.set_defaults(func=cmd_usage)
