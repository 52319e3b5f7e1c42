"""Embedded services: started once per CLEARING_HOME, found again by later commands, stopped cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from clearing.embedded import ensure_services, services_status, stop_services
from clearing.settings import Settings, get_settings, topic

pytestmark = pytest.mark.integration

ROUND_TRIP_TIMEOUT_MS = 20_000


def _embedded_settings(home: Path) -> Settings:
    # Explicit None: a CLEARING_DATABASE_URL in the test runner's environment must not leak in.
    return Settings(home=home, database_url=None, kafka_bootstrap=None)


@pytest.fixture
def home() -> Iterator[Path]:
    # Short path under /tmp: PostgreSQL's Unix socket lives in the data folder (108-byte limit).
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="clearing-home-"))
    yield path
    stop_services(_embedded_settings(path))
    shutil.rmtree(path, ignore_errors=True)


def _kafka_round_trip(bootstrap: str, topic_name: str) -> list[tuple[bytes, bytes]]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ROUND_TRIP_TIMEOUT_MS)
    try:
        admin.create_topics([NewTopic(name=topic_name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for n in range(3):
            producer.send(topic_name, key=b"A1", value=json.dumps({"n": n}).encode(), partition=0)
        producer.flush(timeout=ROUND_TRIP_TIMEOUT_MS / 1000)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partition = TopicPartition(topic_name, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        received: list[tuple[bytes, bytes]] = []
        for _ in range(ROUND_TRIP_TIMEOUT_MS // 500):
            for records in consumer.poll(timeout_ms=500).values():
                received.extend((record.key, record.value) for record in records)
            if len(received) >= 3:
                break
        return received
    finally:
        consumer.close()


def test_services_start_once_are_found_again_and_stop(home: Path) -> None:
    settings = _embedded_settings(home)

    first = ensure_services(settings)
    assert first.embedded_database and first.embedded_broker
    assert first.database_url == f"postgresql+psycopg://postgres@/clearing?host={home / 'postgres'}"
    assert first.kafka_bootstrap.startswith("127.0.0.1:")
    assert first.broker_instance is not None
    before = services_status(settings)
    assert before["database"]["running"] and before["broker"]["running"]
    assert json.loads((home / "broker" / "broker.json").read_text())["instance"] == first.broker_instance

    second = ensure_services(settings)
    after = services_status(settings)
    assert second == first
    assert after["broker"]["pid"] == before["broker"]["pid"]
    assert after["broker"]["port"] == before["broker"]["port"]
    assert after["database"]["pid"] == before["database"]["pid"]

    libpq_url = first.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("clearing",)

    topic_name = f"t{uuid.uuid4().hex[:8]}.fills"
    received = _kafka_round_trip(first.kafka_bootstrap, topic_name)
    assert received == [(b"A1", json.dumps({"n": n}).encode()) for n in range(3)]

    assert sorted(stop_services(settings)) == ["broker", "postgres"]
    status = services_status(settings)
    assert status["database"]["running"] is False
    assert status["broker"]["running"] is False
    assert stop_services(settings) == []


def test_a_broker_started_by_another_process_that_still_runs_stops(tmp_path: Path) -> None:
    """As when ``clearing services stop`` runs beside the ``clearing run`` that started the
    services: the stopped broker stays a zombie of that process, which is not reaping it."""
    from clearing.embedded import pid_alive, stop_broker

    broker_dir = tmp_path / "broker"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from clearing.embedded import launch_broker\n"
        "print(launch_broker(Path(sys.argv[1])).pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script, str(broker_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        pid = int(starter.stdout.readline())
        assert pid_alive(pid)
        assert stop_broker(broker_dir)  # raised psutil.TimeoutExpired after 20 s before
        assert not pid_alive(pid)
    finally:
        assert starter.stdin is not None
        starter.stdin.close()
        starter.wait(30)


def test_a_restarted_broker_is_a_new_instance(home: Path) -> None:
    settings = _embedded_settings(home)
    first = ensure_services(settings, need_broker=True)
    stop_services(settings)
    second = ensure_services(settings)
    assert second.broker_instance != first.broker_instance
    assert second.database_url == first.database_url


def test_configured_services_are_used_and_nothing_is_started(home: Path) -> None:
    settings = Settings(
        home=home,
        database_url=SecretStr("postgresql+psycopg://app:secret@db.example:5432/clearing"),
        kafka_bootstrap="kafka-1:9092,kafka-2:9092",
    )
    services = ensure_services(settings)
    assert services.database_url == "postgresql+psycopg://app:secret@db.example:5432/clearing"
    assert services.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert services.broker_instance is None
    assert not services.embedded_database and not services.embedded_broker
    assert not (home / "postgres").exists() and not (home / "broker").exists()
    status = services_status(settings)
    assert "secret" not in json.dumps(status)


def test_commands_started_at_once_share_one_set_of_services(home: Path) -> None:
    env = {**os.environ, "CLEARING_HOME": str(home)}
    env.pop("CLEARING_DATABASE_URL", None)
    env.pop("CLEARING_KAFKA_BOOTSTRAP", None)
    command = [sys.executable, "-m", "clearing.cli", "services", "start", "--json"]
    started = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [json.loads(process.communicate(timeout=120)[0]) for process in started]
    assert all(process.returncode == 0 for process in started)
    assert len({(o["kafka_bootstrap"], o["broker_instance"], o["database_url"]) for o in outputs}) == 1


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARING_DATABASE_URL", "postgresql://u:pw@h/db")
    monkeypatch.setenv("CLEARING_API_TOKENS", " one, two ,,")
    monkeypatch.setenv("CLEARING_TOPIC_PREFIX", "x.")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.database_url is not None and "pw" not in repr(settings)
        assert settings.database_url_value() == "postgresql://u:pw@h/db"
        assert settings.api_token_list() == ["one", "two"]
        assert topic(settings, "fills") == "x.fills"
        assert settings.database_role == "clearing_app"
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()


def test_the_session_broker_round_trips_messages(broker: str, topic_prefix: str) -> None:
    received = _kafka_round_trip(broker, f"{topic_prefix}fills")
    assert received == [(b"A1", json.dumps({"n": n}).encode()) for n in range(3)]


def test_clearing_settings_point_at_the_test_services(
    clearing_settings: Settings, database_url: str, broker: str, topic_prefix: str
) -> None:
    services = ensure_services(clearing_settings)
    assert services.database_url == database_url
    assert services.kafka_bootstrap == broker
    assert not services.embedded_database and not services.embedded_broker
    assert topic(clearing_settings, "marks") == f"{topic_prefix}marks"
