"""The ``clearing`` command: a thin argparse dispatcher.

Each subcommand's module is imported only when that subcommand runs, so ``clearing --help``
stays fast. To add a command, write ``add_<name>(subparsers)`` that registers its parser with
``set_defaults(handler=...)`` and list it in ``COMMANDS``; a handler takes the parsed arguments
and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse._SubParsersAction, which is private

# ------------------------------------------------------------------------------------------------
# clearing services start|status|stop


def _services_start(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings

    services = ensure_services(get_settings(), need_broker=not args.no_broker)
    result = {
        "database_url": services.database_url,
        "kafka_bootstrap": services.kafka_bootstrap or None,
        "broker_instance": services.broker_instance,
        "embedded_database": services.embedded_database,
        "embedded_broker": services.embedded_broker,
    }
    if not services.embedded_database:
        from sqlalchemy.engine import make_url

        result["database_url"] = make_url(services.database_url).render_as_string(hide_password=True)
    _emit(result, args.json)
    return 0


def _services_status(args: argparse.Namespace) -> int:
    from clearing.embedded import services_status
    from clearing.settings import get_settings

    _emit(services_status(get_settings()), args.json)
    return 0


def _services_stop(args: argparse.Namespace) -> int:
    from clearing.embedded import stop_services
    from clearing.settings import get_settings

    stopped = stop_services(get_settings())
    if args.json:
        _emit({"stopped": stopped}, True)
    else:
        out("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def add_services(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("services", help="start, inspect or stop the embedded PostgreSQL and broker")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start (or find) the embedded services under CLEARING_HOME")
    start.add_argument("--no-broker", action="store_true", help="start only the database")
    start.set_defaults(handler=_services_start)
    status = actions.add_parser("status", help="say what runs where, starting nothing")
    status.set_defaults(handler=_services_status)
    stop = actions.add_parser("stop", help="stop the embedded services under CLEARING_HOME")
    stop.set_defaults(handler=_services_stop)
    for sub in (start, status, stop):
        sub.add_argument("--json", action="store_true", help="print JSON")


# ------------------------------------------------------------------------------------------------
# clearing db upgrade


def _db_upgrade(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings
    from clearing.store.db import current_revision, upgrade

    services = ensure_services(get_settings(), need_broker=False)
    upgrade(services.database_url, args.revision)
    out(f"database at revision {current_revision(services.database_url)}")
    return 0


def add_db(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("db", help="database schema")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=_db_upgrade)


# ------------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[Subparsers], None]] = [add_services, add_db]


def out(text: str) -> None:
    """Write one line of command output to standard output (the CLI's only way to print)."""
    sys.stdout.write(text + "\n")


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        out(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    _print_tree(data, 0)


def _print_tree(data: Any, indent: int) -> None:
    pad = "  " * indent
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                out(f"{pad}{key}:")
                _print_tree(value, indent + 1)
            else:
                out(f"{pad}{key}: {value}")
    else:
        out(f"{pad}{data}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearing",
        description="Event-sourced clearinghouse ledger and margin engine.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
