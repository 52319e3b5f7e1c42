"""``clearing run``: wires the Kafka input adapter, the ledger engine and the outbox relay."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from clearing.embedded import Services
from clearing.engine.checkpoints import signer_from
from clearing.engine.ledger import BatchResult, Ledger
from clearing.engine.metrics import LedgerMetrics
from clearing.engine.outbox import OutboxRelay
from clearing.engine.runner import RunStats, kv, run
from clearing.settings import Settings
from clearing.store.db import make_engine
from consumers.input_process import InputProcess
from consumers.kafka_input import ensure_topics

logger = logging.getLogger(__name__)

LAG_EVERY_BATCHES = 20  # consumer lag is read from the client's last fetch every this many batches
BROKER_UNREACHABLE_WARN_S = 5.0  # a broker unreachable this long is logged (at each progress line)


def run_ledger(
    settings: Settings,
    services: Services,
    *,
    shard: int = 0,
    shards: int = 1,
    stop: threading.Event | None = None,
    on_batch: Callable[[BatchResult, RunStats], None] | None = None,
    on_loaded: Callable[[int], None] | None = None,
    load_progress: Any = None,
    install_signal_handlers: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    reread_past_end: bool = False,
) -> RunStats:
    """Run one shard's ledger until stopped; raises ``runner.LedgerHalted`` when it cannot go on
    safely (the message says what to do). ``reread_past_end``: partitions whose stored offsets
    are past the broker's end are read from their beginning (the operator's recovery after a
    broker lost its messages: see ``consumers.kafka_input.BrokerLostMessages``)."""
    # Logged in as the ledger's own role (not the owner with SET ROLE): no SQL on these connections
    # can take the owner's rights back.
    engine = make_engine(services.database_url, role=settings.database_role, password=settings.database_role_password)
    try:
        ensure_topics(services.kafka_bootstrap, settings.topic_prefix)
        # Started first: the child imports and connects while the state loads. run() closes it.
        source = InputProcess(
            services.kafka_bootstrap, settings.topic_prefix, shard=shard, shards=shards, reread_past_end=reread_past_end
        )
        try:
            ledger = Ledger(engine, shard=shard, topic_prefix=settings.topic_prefix)
            ledger.checkpoints.signer = signer_from(settings)
            started = time.monotonic()
            replayed = ledger.load(progress=load_progress)
            head = ledger.head
            logger.info(
                kv("ledger_started", shard=shard, shards=shards, log_position=head.position,
                   shard_position=head.shard_position, last_hash=head.last_hash.hex()[:16],
                   replayed_events=replayed, load_s=time.monotonic() - started, broker=services.kafka_bootstrap,
                   broker_instance=services.broker_instance, topic_prefix=settings.topic_prefix)
            )  # fmt: skip
            if on_loaded is not None:
                on_loaded(replayed)
            relay = OutboxRelay(engine, services.kafka_bootstrap)
            metrics = LedgerMetrics(shard)
            metrics.watch_outbox(lambda: relay.backlog)
            if metrics_port is not None:
                metrics.serve(metrics_port, metrics_host)
        except BaseException:
            source.close()
            raise

        def observed(result: BatchResult, stats: RunStats) -> None:
            metrics.observe(result)
            if stats.batches % LAG_EVERY_BATCHES == 1:
                metrics.set_lag(source.lag())
            if on_batch is not None:
                on_batch(result, stats)

        def unreachable(stats: RunStats) -> None:
            silent = source.unreachable_s()
            if silent >= BROKER_UNREACHABLE_WARN_S:
                logger.warning(
                    kv("broker_unreachable", shard=shard, broker=services.kafka_bootstrap, for_s=silent,
                       position=stats.last_position or ledger.head.position,
                       action="reconnecting; consuming resumes where it stopped once the broker answers")
                )  # fmt: skip

        return run(
            ledger,
            source,
            relay,
            progress=unreachable,
            broker_instance=services.broker_instance,
            stop=stop,
            on_batch=observed,
            install_signal_handlers=install_signal_handlers,
        )
    finally:
        engine.dispose()
