"""Exposure logging off the request path: a bounded buffer drained to Kafka by one thread.

:meth:`ExposureLog.offer` costs a ``deque.append`` under a lock, never I/O: a request never
waits for the broker. When the buffer is full (the broker is slow or down) the exposure is
dropped and counted; a failed send counts its exposures as failed.

Every ``flush_ms`` the thread sends what accumulated as Kafka records of up to
``per_record`` exposures each (:func:`schemas.exposures.envelope`): kafka-python spends about
0.3 ms of CPU per record, in the server's process, so one record per served list would cost
a third of a core at 1,000 requests/s and hold the GIL from the requests
(``bench/serve_latency.py``). Each record goes as its own producer batch, as the bundled
development broker needs (DEVELOPERS.md); at a few dozen records a second that costs nothing.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class ExposureLog:
    """A bounded buffer (``capacity`` exposures) and the thread that sends it."""

    def __init__(self, options: Mapping[str, str], topic: str, *, capacity: int = 10_000,
                 flush_ms: int = 50, per_record: int = 500):
        self.options, self.topic, self.capacity = dict(options), topic, capacity
        self.flush_s, self.per_record = max(1, flush_ms) / 1e3, per_record
        self._buf: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sent = self.dropped = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="lakerec-exposures",
                                        daemon=True)
        self._thread.start()

    def offer(self, exposure: tuple) -> bool:
        """Queue one exposure (the arguments of :func:`schemas.exposures.message`);
        ``False`` (and counted as dropped) when the buffer is full."""
        with self._lock:
            if len(self._buf) >= self.capacity:
                self.dropped += 1
                return False
            self._buf.append(exposure)
        return True

    def pending(self) -> int:
        return len(self._buf)

    def _producer(self):
        from kafka import KafkaProducer

        from pipelines.streaming.kafka_source import client_config

        # acks=1 and no retries: a duplicate or a stall is worse than a counted loss here
        return KafkaProducer(**client_config(self.options), acks=1, retries=0,
                             enable_idempotence=False, linger_ms=0, batch_size=1,
                             max_block_ms=2000, max_request_size=8 << 20)

    def _run(self) -> None:
        from schemas.exposures import envelope, message

        producer = None
        while True:
            stopping = self._stop.wait(self.flush_s)
            if self._buf:
                if producer is None:
                    try:
                        producer = self._producer()
                    except Exception as e:  # noqa: BLE001 - the broker is down: keep buffering
                        log.warning("exposures: cannot reach Kafka (%s); retrying", e)
                        if stopping:
                            break
                        time.sleep(1.0)
                        continue
                with self._lock:
                    batch = list(self._buf)
                    self._buf.clear()
                for i in range(0, len(batch), self.per_record):
                    part = [message(*e) for e in batch[i:i + self.per_record]]
                    n = len(part)
                    try:
                        fut = producer.send(self.topic,
                                            json.dumps(envelope(part)).encode())
                    except Exception as e:  # noqa: BLE001 - buffer full inside the client
                        self.failed += n
                        log.debug("exposures: send failed: %s", e)
                        continue
                    self.sent += n
                    fut.add_errback(self._failed, n)
            if stopping:
                break
        if producer is not None:
            try:
                producer.flush(timeout=5)
                producer.close(timeout=5)
            except Exception:  # noqa: BLE001
                pass

    def _failed(self, n: int, exc) -> None:
        self.failed += n
        self.sent -= n

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered (up to ``timeout_s``), then stop the thread."""
        self._stop.set()
        self._thread.join(timeout_s)
