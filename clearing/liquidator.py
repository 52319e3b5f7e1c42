"""A simulated exchange that executes the ledger's liquidation orders.

It reads ``<prefix>liquidation-orders`` (manual assignment, from the beginning or from given
offsets) and, for each ``liquidation_order``, publishes

* to ``<prefix>liquidations`` a ``liquidation_fill`` of the whole order at the mark the order
  carries (CONTRACT.md fields), with ``fill_id = LF-<liquidation_id>``;
* to ``<prefix>fills`` the other side of that execution: an ordinary ``fill`` of the market maker
  (``MM-LIQUIDITY``) with ``fill_id = LC-<liquidation_id>`` and ``trade_id = LT-<liquidation_id>``,

so every execution has its counterpart and the books stay double-entry. Ids derive from the
liquidation id and times from the order, so a re-run publishes byte-identical messages, which the
ledger takes as redeliveries (no-ops).

An order the ledger cancels (its margin call resolved while the order was pending) may still be
executed here, as on a real exchange that has not heard of the cancellation: the ledger books such
an execution like any other (it is a fact, and its counterpart fill is booked too).

The market maker gets one large deposit (``transfer_id = MM-LIQUIDITY-DEPOSIT``) when the
liquidator starts; it never places orders of its own and is never the account being liquidated.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

logger = logging.getLogger(__name__)

MARKET_MAKER = "MM-LIQUIDITY"
MARKET_MAKER_DEPOSIT = "1000000000000"
DEPOSIT_TIME = "2000-01-01T00:00:00Z"  # fixed, so that every run sends the same deposit
POLL_MS = 200


@dataclass
class LiquidatorStats:
    orders: int = 0
    filled: int = 0
    skipped: int = 0


def liquidation_messages(
    order: dict[str, Any],
) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic kind, key, value) of the execution of one liquidation order and its counterpart."""
    liquidation_id = order["liquidation_id"]
    price = order.get("mark") or order["bankruptcy_price"]
    occurred_at = order["occurred_at"]
    execution = {
        "type": "liquidation_fill",
        "liquidation_id": liquidation_id,
        "fill_id": f"LF-{liquidation_id}",
        "account_id": order["account_id"],
        "instrument": order["instrument"],
        "side": order["side"],
        "quantity": order["quantity"],
        "price": price,
        "occurred_at": occurred_at,
    }
    return [
        ("liquidations", order["account_id"], execution),
        ("fills", MARKET_MAKER, _market_maker_fill(order, price, f"LC-{liquidation_id}")),
    ]


def _market_maker_fill(order: dict[str, Any], price: str, fill_id: str) -> dict[str, Any]:
    """The market maker takes the other side of the order."""
    side = "buy" if order["side"] == "sell" else "sell"
    return {
        "type": "fill",
        "fill_id": fill_id,
        "trade_id": f"LT-{order['liquidation_id']}",
        "account_id": MARKET_MAKER,
        "instrument": order["instrument"],
        "side": side,
        "quantity": order["quantity"],
        "price": price,
        "fee": "0",
        "fee_asset": "USDT",
        "liquidity": "maker",
        "margin_mode": "cross",
        "occurred_at": order["occurred_at"],
    }


def deposit_message(market_maker: str = MARKET_MAKER) -> tuple[str, str, dict[str, Any]]:
    return (
        "transfers",
        market_maker,
        {
            "type": "deposit",
            "transfer_id": f"{market_maker}-DEPOSIT",
            "account_id": market_maker,
            "asset": "USDT",
            "amount": MARKET_MAKER_DEPOSIT,
            "occurred_at": DEPOSIT_TIME,
        },
    )


class Liquidator:
    """Reads orders, publishes executions. ``run(stop)`` loops until ``stop``
    is set; ``poll_once()`` does one round and returns how many messages it published."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        *,
        offsets: dict[int, int] | None = None,
    ) -> None:
        self.prefix = prefix
        self.stats = LiquidatorStats()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.orders_topic = prefix + "liquidation-orders"
        partitions = [
            TopicPartition(self.orders_topic, p)
            for p in sorted(self.consumer.partitions_for_topic(self.orders_topic) or ())
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        for partition, offset in (offsets or {}).items():
            self.consumer.seek(TopicPartition(self.orders_topic, partition), offset)
        # The latest coordinates this liquidator produced, per (topic, partition): for callers
        # that wait until the ledger has consumed them.
        self.produced: dict[tuple[str, int], int] = {}

    def publish_deposit(self) -> None:
        self._send([deposit_message()])

    def _send(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        futures = [
            self.producer.send(
                self.prefix + kind, key=key.encode(), value=json.dumps(value, separators=(",", ":")).encode()
            )
            for kind, key, value in messages
        ]
        self.producer.flush()
        for future in futures:
            metadata = future.get(timeout=30)
            coordinates = (metadata.topic, metadata.partition)
            self.produced[coordinates] = max(self.produced.get(coordinates, 0), metadata.offset + 1)

    def poll_once(self, timeout_ms: int = POLL_MS) -> int:
        out: list[tuple[str, str, dict[str, Any]]] = []
        for _tp, records in sorted(self.consumer.poll(timeout_ms=timeout_ms).items()):
            for record in records:
                out.extend(self._order(json.loads(record.value)))
        if out:
            self._send(out)
        return len(out)

    def _order(self, order: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        if order.get("type") != "liquidation_order":
            return []
        self.stats.orders += 1
        if order["account_id"] == MARKET_MAKER:
            logger.warning("liquidation order %s is for the market maker itself: not filled", order["liquidation_id"])
            self.stats.skipped += 1
            return []
        self.stats.filled += 1
        logger.info(
            "filling %s: %s %s %s of %s",
            order["liquidation_id"], order["side"], order["quantity"], order["instrument"], order["account_id"],
        )
        return liquidation_messages(order)

    def run(self, stop: threading.Event) -> LiquidatorStats:
        """Poll and publish until ``stop`` is set (or Ctrl-C)."""
        try:
            while not stop.is_set():
                self.poll_once()
        except KeyboardInterrupt:
            pass
        return self.stats

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.consumer.close()


def run_liquidator(
    bootstrap: str, prefix: str, *, stop: threading.Event | None = None, offsets: dict[int, int] | None = None
) -> LiquidatorStats:
    liquidator = Liquidator(bootstrap, prefix, offsets=offsets)
    try:
        liquidator.publish_deposit()
        return liquidator.run(stop or threading.Event())
    finally:
        liquidator.close()
