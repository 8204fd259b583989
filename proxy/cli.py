"""modelway serve | check | routes | migrate | keys | usage"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from proxy.config import ConfigError, load_config
from proxy.store.files import DataDirError, check_data_dir

DEFAULT_CONFIG = os.environ.get("MODELWAY_CONFIG", "routes.yaml")


def _load_or_exit(path: str):
    try:
        return load_config(path)
    except FileNotFoundError:
        print(f"modelway: config file not found: {path}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:   # a directory, no permission, ...
        print(f"modelway: cannot read config file {path}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except ConfigError as exc:
        print(f"modelway: {path} has {len(exc.problems)} problem(s):", file=sys.stderr)
        for p in exc.problems:
            print("  " + p.format(path), file=sys.stderr)
        sys.exit(1)


def cmd_serve(args) -> int:
    from proxy import logs
    logs.configure(args.log_level)
    config = _load_or_exit(args.config)
    host = args.host or config.server.host
    port = args.port or config.server.port
    workers = args.workers or config.server.workers
    try:
        check_data_dir(config.server.data_dir)
    except DataDirError as exc:
        print(f"modelway: {exc}", file=sys.stderr)
        return 1
    if workers > 1:
        from proxy.supervisor import supervise
        argv = ["serve", "--config", args.config, "--host", host, "--port", str(port), "--log-level", args.log_level]
        return supervise(argv, workers, host, port, config.server.drain_seconds,
                         os.path.abspath(config.server.data_dir))
    from proxy.server import run_worker
    return run_worker(config, os.path.abspath(args.config), host, port, reuse_port=args.reuse_port,
                      notify=not args.no_notify)


def cmd_check(args) -> int:
    config = _load_or_exit(args.config)
    from proxy.pipeline import MiddlewareBuildError, load_factory
    problems = []
    for spec in config.middlewares:
        try:
            load_factory(spec.name)
        except MiddlewareBuildError as exc:
            problems.append(str(exc))
    for w in config.warnings:
        print(f"warning: {w}")
    if problems:
        for p in problems:
            print(f"{args.config}: {p}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(config.models)} models, {len(config.providers)} providers, "
          f"{len(config.presets)} presets, version {config.version})")
    from proxy.state.stores import describe   # here: the other commands need not load the table
    for line in describe(config.state):
        print(line)
    return 0


def cmd_migrate(args) -> int:
    config = _load_or_exit(args.config)
    from proxy.state.migrate import cmd_migrate as migrate   # loads asyncpg: only for this command
    return migrate(args, config)


def cmd_routes(args) -> int:
    from proxy.routes_table import print_routes
    config = _load_or_exit(args.config)
    return print_routes(config, args.format)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelway", description="Self-hosted LLM gateway")
    parser.add_argument("--version", action="version", version=f"modelway {_version()}")
    sub = parser.add_subparsers(dest="command")

    def with_config(p):
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="path to routes.yaml")
        return p

    s = with_config(sub.add_parser("serve", help="run the gateway"))
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--log-level", default="info")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--no-notify", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check", help="validate routes.yaml")).set_defaults(func=cmd_check)
    r = with_config(sub.add_parser("routes", help="print the resolved routing table"))
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.set_defaults(func=cmd_routes)
    m = with_config(sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema of state.database"))
    m.add_argument("--from-sqlite", metavar="PATH",
                   help="also copy stored responses from this SQLite file (or data_dir)")
    m.set_defaults(func=cmd_migrate)
    try:
        from proxy.cli_store import add_store_commands
        add_store_commands(sub, with_config)
    except ImportError:
        pass
    return parser


def _version() -> str:
    try:
        return metadata.version("modelway")
    except metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:       # a bare `modelway`: its help, as a newcomer expects
        parser.print_help()
        return 0
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
