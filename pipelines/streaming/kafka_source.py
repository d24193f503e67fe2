"""A Kafka source for Structured Streaming, as a pyspark Python Data Source on ``kafka-python``.

Spark's own Kafka connector is a Maven artifact (out of reach of the build machines); this
reader follows its design so that it stays correct against Apache Kafka:

* offsets live in Spark's checkpoint (the source of truth) as ``{"topic": {"0": 42}}``; the
  consumer group is never used for positions (optional commits only feed lag dashboards);
* one input partition per Kafka partition, read with ``assign()`` + ``seek()`` from the
  batch's start offset until the consumer's *position* reaches the end offset -- offsets may
  have gaps (compaction, transaction markers), so records are never counted;
* ``startingOffsets`` ``earliest`` | ``latest`` | explicit JSON; partitions that appear later
  start at their earliest offset; ``maxOffsetsPerTrigger`` caps a batch, split over the
  partitions in proportion to their backlog;
* a checkpointed offset the broker no longer holds (retention, a lost broker) fails the batch
  with :class:`OffsetOutOfRangeError`, unless ``failOnDataLoss=false``, which skips ahead to the
  earliest retained offset and logs a warning naming the lost range;
* SSL and SASL_SSL / SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256/512) through ``kafka.*`` options,
  with the secrets read from the environment (:data:`SECRET_ENV`), never from options, and
  never logged.

Example
-------
>>> spark.dataSource.register(KafkaSource)                           # doctest: +SKIP
>>> df = (spark.readStream.format("lakerec_kafka")                   # doctest: +SKIP
...       .option("kafka.bootstrap.servers", "127.0.0.1:9092")
...       .option("subscribe", "feedback").option("startingOffsets", "earliest")
...       .option("maxOffsetsPerTrigger", 20000).load())
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from pipelines.errors import FatalStreamError, UsageError

log = logging.getLogger(__name__)

FORMAT = "lakerec_kafka"
SCHEMA = ("key binary, value binary, topic string, partition int, offset long, "
          "timestamp timestamp")
# where the secrets come from (never options: those end up in plans and logs)
SECRET_ENV = {
    "sasl_plain_username": "LAKEREC_KAFKA_SASL_USERNAME",
    "sasl_plain_password": "LAKEREC_KAFKA_SASL_PASSWORD",
    "ssl_password": "LAKEREC_KAFKA_SSL_KEY_PASSWORD",
}
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# kafka.<option> -> kafka-python argument (the subset a lakehouse job needs)
_CLIENT_OPTIONS = {
    "kafka.bootstrap.servers": "bootstrap_servers",
    "kafka.security.protocol": "security_protocol",
    "kafka.sasl.mechanism": "sasl_mechanism",
    "kafka.ssl.cafile": "ssl_cafile",
    "kafka.ssl.certfile": "ssl_certfile",
    "kafka.ssl.keyfile": "ssl_keyfile",
    "kafka.ssl.check.hostname": "ssl_check_hostname",
    "kafka.client.id": "client_id",
    "kafka.request.timeout.ms": "request_timeout_ms",
}


class OffsetOutOfRangeError(FatalStreamError):
    """The checkpoint asks for offsets the broker no longer has: data would be skipped."""


class KafkaConfigError(UsageError):
    """Bad or incomplete source options (a usage error)."""


def client_config(options: Mapping[str, str], env: Mapping[str, str] | None = None) -> dict:
    """kafka-python client arguments from ``kafka.*`` options plus secrets from ``env``.

    Raises :class:`KafkaConfigError` naming what is missing; secret values never appear in
    messages.
    """
    env = os.environ if env is None else env
    cfg: dict = {}
    for opt, arg in _CLIENT_OPTIONS.items():
        if opt in options and options[opt] not in (None, ""):
            cfg[arg] = options[opt]
    unknown = sorted(k for k in options if k.startswith("kafka.") and k not in _CLIENT_OPTIONS)
    if unknown:
        raise KafkaConfigError(f"unsupported Kafka options: {', '.join(unknown)}")
    if "bootstrap_servers" not in cfg:
        raise KafkaConfigError("option kafka.bootstrap.servers is required")
    cfg["bootstrap_servers"] = [s.strip() for s in str(cfg["bootstrap_servers"]).split(",")
                                if s.strip()]
    proto = str(cfg.get("security_protocol", "PLAINTEXT")).upper()
    if proto not in _PROTOCOLS:
        raise KafkaConfigError(f"kafka.security.protocol must be one of {', '.join(_PROTOCOLS)}")
    cfg["security_protocol"] = proto
    if "ssl_check_hostname" in cfg:
        cfg["ssl_check_hostname"] = str(cfg["ssl_check_hostname"]).lower() == "true"
    if "request_timeout_ms" in cfg:
        cfg["request_timeout_ms"] = int(cfg["request_timeout_ms"])
    if proto.startswith("SASL"):
        mech = str(cfg.get("sasl_mechanism", "")).upper()
        if mech not in _MECHANISMS:
            raise KafkaConfigError(f"{proto} needs kafka.sasl.mechanism, one of "
                                   f"{', '.join(_MECHANISMS)}")
        cfg["sasl_mechanism"] = mech
        for arg in ("sasl_plain_username", "sasl_plain_password"):
            if not env.get(SECRET_ENV[arg]):
                raise KafkaConfigError(f"{proto} needs the environment variable "
                                       f"{SECRET_ENV[arg]}")
            cfg[arg] = env[SECRET_ENV[arg]]
    elif "sasl_mechanism" in cfg:
        raise KafkaConfigError("kafka.sasl.mechanism is set but kafka.security.protocol is "
                               f"{proto}")
    if proto in ("SSL", "SASL_SSL") and env.get(SECRET_ENV["ssl_password"]):
        cfg["ssl_password"] = env[SECRET_ENV["ssl_password"]]
    return cfg


def redacted(cfg: Mapping) -> dict:
    """``cfg`` safe to log: secret values replaced."""
    return {k: ("***" if k in SECRET_ENV else v) for k, v in cfg.items()}


# --------------------------------------------------------------------------- offsets


def parse_offsets(text: str) -> dict[str, dict[str, int]]:
    """``{"topic": {"0": 42}}`` (Spark's Kafka offset JSON) -> validated dict."""
    try:
        raw = json.loads(text)
        out = {str(t): {str(int(p)): int(o) for p, o in parts.items()} for t, parts in raw.items()}
    except (ValueError, AttributeError, TypeError):
        raise KafkaConfigError(f"offsets must look like {{\"topic\": {{\"0\": 42}}}}: {text!r}"
                               ) from None
    return out


def flat_offsets(offsets: Mapping) -> dict[tuple[str, int], int]:
    return {(t, int(p)): int(o) for t, parts in offsets.items() for p, o in parts.items()}


def nested_offsets(flat: Mapping[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (t, p), o in sorted(flat.items()):
        out.setdefault(t, {})[str(p)] = int(o)
    return out


def cap_offsets(start: Mapping[tuple[str, int], int], end: Mapping[tuple[str, int], int],
                limit: int | None) -> dict[tuple[str, int], int]:
    """End offsets for one trigger: at most ``limit`` offsets in all, shared by backlog.

    Each partition gets ``floor(limit * backlog_p / backlog)``, the remainder going to the
    largest backlogs first (ties by topic, partition), so the batch holds exactly
    ``min(limit, backlog)`` offsets and no partition starves.
    """
    backlog = {tp: max(0, end[tp] - start.get(tp, end[tp])) for tp in end}
    total = sum(backlog.values())
    if limit is None or total <= limit:
        return dict(end)
    take = {tp: limit * b // total for tp, b in backlog.items()}
    rest = limit - sum(take.values())
    for tp in sorted(backlog, key=lambda tp: (-(backlog[tp] - take[tp]), tp)):
        if rest == 0:
            break
        if take[tp] < backlog[tp]:
            take[tp] += 1
            rest -= 1
    return {tp: start.get(tp, end[tp]) + take[tp] for tp in end}


@dataclass(frozen=True)
class KafkaPartition(InputPartition):
    """One Kafka partition's offset range ``[start, end)`` of one micro-batch."""

    topic: str
    partition: int
    start: int
    end: int
    client: dict = field(repr=False, default_factory=dict)
    poll_timeout_ms: int = 120_000

    def __post_init__(self):  # InputPartition's own field, kept for its repr/pickling
        object.__setattr__(self, "value", None)


@dataclass(frozen=True)
class SourceOptions:
    """The parsed options of one stream (see module docstring)."""

    topics: tuple[str, ...]
    starting: str | dict
    max_per_trigger: int | None
    fail_on_data_loss: bool
    poll_timeout_ms: int
    group_for_commits: str | None
    resume: dict | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> SourceOptions:
        opts = {str(k): str(v) for k, v in options.items()}
        # Spark lower-cases data source option keys; accept both spellings
        low = {k.lower(): v for k, v in opts.items()}
        topics = tuple(t.strip() for t in low.get("subscribe", "").split(",") if t.strip())
        if not topics:
            raise KafkaConfigError("option subscribe (comma-separated topics) is required")
        starting: str | dict = low.get("startingoffsets", "latest").strip()
        if starting.startswith("{"):
            starting = parse_offsets(starting)
        elif starting not in ("earliest", "latest"):
            raise KafkaConfigError("startingOffsets must be earliest, latest or offset JSON")
        cap = low.get("maxoffsetspertrigger")
        try:
            max_per = int(cap) if cap not in (None, "") else None
            poll = int(low.get("polltimeoutms", "120000"))
        except ValueError:
            raise KafkaConfigError("maxOffsetsPerTrigger and pollTimeoutMs are integers"
                                   ) from None
        if max_per is not None and max_per <= 0:
            raise KafkaConfigError("maxOffsetsPerTrigger must be positive")
        lost = low.get("failondataloss", "true").lower()
        if lost not in ("true", "false"):
            raise KafkaConfigError("failOnDataLoss must be true or false")
        resume_text = low.get("lakerec.resumeoffsets", "").strip()
        # offset JSON: where the checkpoint's last batch ended (a restart); "starting": a new
        # query, whose first batch starts at startingOffsets. Spark asks a Python source for
        # its latest offset before its initial one, so the cap needs to be told where the
        # first batch starts.
        resume: dict | str | None = resume_text if resume_text == "starting" else \
            parse_offsets(resume_text) if resume_text else None
        client = {k: v for k, v in low.items() if k.startswith("kafka.")}
        client_config(client)  # fail early, on the driver, with a clear message
        return cls(topics, starting, max_per, lost == "true", poll,
                   low.get("groupidforcommits") or None, resume, client)


class KafkaSource(DataSource):
    """``spark.readStream.format("lakerec_kafka")``: Kafka records with their coordinates."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema):  # noqa: N802 - the pyspark API
        return KafkaStreamReader(SourceOptions.parse(self.options))


def _retry(what: str, fn, *, timeout_s: float):
    """Call ``fn`` until it succeeds or ``timeout_s`` passes (the broker may be restarting)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return fn()
        except (KafkaError, OSError) as e:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(e).__name__, delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


class KafkaStreamReader(DataSourceStreamReader):
    """Driver side: offsets and planning. :meth:`read` runs on executors."""

    def __init__(self, options: SourceOptions):
        self.options = options
        self._client = client_config(options.raw)
        self._consumer = None
        self._last: dict[tuple[str, int], int] | None = \
            flat_offsets(options.resume) if isinstance(options.resume, dict) else None
        self._new_query = options.resume == "starting"

    # -- broker metadata (driver) --------------------------------------------------------
    def _metadata_consumer(self):
        from kafka import KafkaConsumer

        if self._consumer is None:
            self._consumer = KafkaConsumer(**self._client, enable_auto_commit=False,
                                           group_id=None)
        return self._consumer

    def _partitions(self) -> list:
        from kafka import TopicPartition

        c = self._metadata_consumer()

        def lookup():
            out = []
            for t in self.options.topics:
                parts = c.partitions_for_topic(t)
                if parts is None:  # refresh metadata once; a missing topic is an error
                    c.topics()
                    parts = c.partitions_for_topic(t)
                if not parts:
                    raise KafkaConfigError(f"topic {t!r} does not exist on the broker")
                out += [TopicPartition(t, p) for p in sorted(parts)]
            return out

        return _retry("listing partitions", lookup, timeout_s=self.options.poll_timeout_ms / 1e3)

    def _bounds(self, which: str) -> dict[tuple[str, int], int]:
        c = self._metadata_consumer()
        tps = self._partitions()
        fn = c.beginning_offsets if which == "earliest" else c.end_offsets
        got = _retry(f"reading {which} offsets", lambda: fn(tps),
                     timeout_s=self.options.poll_timeout_ms / 1e3)
        return {(tp.topic, tp.partition): int(o) for tp, o in got.items()}

    # -- the DataSourceStreamReader protocol ---------------------------------------------
    def _starting(self) -> dict[tuple[str, int], int]:
        s = self.options.starting
        if isinstance(s, dict):
            earliest = self._bounds("earliest")
            flat = flat_offsets(s)
            missing = sorted(set(earliest) - set(flat))
            if missing:
                raise KafkaConfigError(f"startingOffsets lacks partitions {missing}")
            return {tp: flat[tp] for tp in earliest}
        return self._bounds(s)

    def initialOffset(self) -> dict:  # noqa: N802 - the pyspark API
        start = self._starting()
        if self._last is None:  # a new query: the first batch is capped from here
            self._last = dict(start)
        return nested_offsets(start)

    def latestOffset(self) -> dict:  # noqa: N802 - the pyspark API
        if self._last is None and self._new_query:
            # Spark calls this before initialOffset(): cap the first batch from the start
            self._last = self._starting()
        ends = self._bounds("latest")
        start = dict(self._last) if self._last is not None else None
        if start is not None:
            back = {tp: (start[tp], e) for tp, e in ends.items() if tp in start and e < start[tp]}
            if back and self.options.fail_on_data_loss:
                raise OffsetOutOfRangeError(
                    "the broker's end offsets went back "
                    + ", ".join(f"{t}/{p}: {a} -> {b}" for (t, p), (a, b) in sorted(back.items()))
                    + " (topic re-created or broker data lost); refusing to guess. Start a new "
                    "checkpoint, or set failOnDataLoss=false to skip ahead")
            new = [tp for tp in ends if tp not in start]
            if new:  # partitions added since: from their earliest offset, like Spark
                earliest = self._bounds("earliest")
                start.update({tp: earliest[tp] for tp in new})
            start = {tp: min(o, ends.get(tp, o)) for tp, o in start.items()}
            end = cap_offsets(start, ends, self.options.max_per_trigger)
        else:
            end = ends
        self._last = end
        return nested_offsets(end)

    def partitions(self, start: dict, end: dict):
        s, e = flat_offsets(start), flat_offsets(end)
        self._last = dict(e)
        earliest = self._bounds("earliest")
        out = []
        for tp, stop in sorted(e.items()):
            first = s.get(tp, earliest.get(tp, 0))
            if tp in earliest and first < earliest[tp]:
                lost = f"{tp[0]}/{tp[1]} offsets {first}..{earliest[tp] - 1}"
                if self.options.fail_on_data_loss:
                    raise OffsetOutOfRangeError(
                        f"{lost} are no longer on the broker (retention or a lost broker); "
                        "the checkpoint cannot be honoured without skipping them. Re-run with "
                        "failOnDataLoss=false (lakerec stream --skip-lost-offsets) to skip ahead")
                log.warning("DATA LOSS: skipping %s, no longer on the broker", lost)
                first = earliest[tp]
            if stop > first:
                out.append(KafkaPartition(tp[0], tp[1], first, stop, self._client,
                                          self.options.poll_timeout_ms))
        return out

    def read(self, partition: KafkaPartition):
        return read_range(partition)

    def commit(self, end: dict) -> None:
        if not self.options.group_for_commits:
            return
        from kafka import KafkaConsumer, TopicPartition
        from kafka.structs import OffsetAndMetadata

        try:  # only for lag dashboards: never fatal, never a source of truth
            c = KafkaConsumer(**self._client, group_id=self.options.group_for_commits,
                              enable_auto_commit=False)
            c.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                      for (t, p), o in flat_offsets(end).items()})
            c.close()
        except Exception as e:  # noqa: BLE001 - a dashboard feed must not stop the stream
            log.warning("committing group offsets failed: %s", type(e).__name__)

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def read_range(part: KafkaPartition, *, chunk: int = 2000):
    """Read ``[part.start, part.end)`` of one partition as Arrow record batches.

    Stops when the consumer's position reaches ``end`` (so gaps in offsets are fine). Waits
    through broker outages up to ``poll_timeout_ms`` without progress, then fails the task.
    """
    import pyarrow as pa
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(part.topic, part.partition)
    schema = pa.schema([("key", pa.binary()), ("value", pa.binary()), ("topic", pa.string()),
                        ("partition", pa.int32()), ("offset", pa.int64()),
                        ("timestamp", pa.timestamp("us", tz="UTC"))])
    key = (json.dumps(part.client, sort_keys=True, default=str), part.topic, part.partition)
    c = _CONSUMERS.pop(key, None)  # taken out while in use; put back only after success
    if c is None:
        # a short fetch wait: a micro-batch waits for its slowest partition's first fetch
        c = KafkaConsumer(**part.client, enable_auto_commit=False, group_id=None,
                          max_partition_fetch_bytes=8 << 20, fetch_max_wait_ms=100)
        c.assign([tp])
        c.seek(tp, part.start)
    elif c.position(tp) != part.start:
        c.seek(tp, part.start)
    ok = False
    try:
        position = part.start
        idle_since = time.monotonic()
        cols: dict[str, list] = {n: [] for n in schema.names}
        while position < part.end:
            # never past the range's end: the consumer then stays at ``end`` with what it
            # fetched beyond kept for the next batch, which starts there (no seek back and
            # no second fetch of the same records)
            got = c.poll(timeout_ms=500,
                         max_records=max(1, min(chunk, part.end - position))).get(tp, [])
            if not got:
                position = max(position, c.position(tp) or position)
                if position >= part.end:
                    break
                if (time.monotonic() - idle_since) * 1e3 > part.poll_timeout_ms:
                    raise TimeoutError(
                        f"{part.topic}/{part.partition}: no records for "
                        f"{part.poll_timeout_ms} ms at offset {position} (range ends at "
                        f"{part.end}); is the broker up?")
                continue
            idle_since = time.monotonic()
            for r in got:
                if r.offset >= part.end:
                    position = part.end
                    break
                cols["key"].append(r.key)
                cols["value"].append(r.value)
                cols["offset"].append(r.offset)
                cols["timestamp"].append(
                    _dt.datetime.fromtimestamp(r.timestamp / 1000, _dt.UTC)
                    if r.timestamp is not None and r.timestamp >= 0 else None)
                position = r.offset + 1
            if len(cols["offset"]) >= chunk or position >= part.end:
                yield _batch(cols, part, schema)
                cols = {n: [] for n in schema.names}
        if cols["offset"]:
            yield _batch(cols, part, schema)
        ok = True
    finally:
        if ok and len(_CONSUMERS) < 64:
            # kept for the next batch of this partition in this Python worker: it starts
            # where this one ended, so the consumer's prefetched records are the next ones
            _CONSUMERS[key] = c
        else:
            c.close()


# executor-side consumer cache, as Spark's own Kafka source keeps one per partition
_CONSUMERS: dict = {}


def _batch(cols: dict, part: KafkaPartition, schema):
    import pyarrow as pa

    n = len(cols["offset"])
    return pa.RecordBatch.from_arrays([
        pa.array(cols["key"], pa.binary()), pa.array(cols["value"], pa.binary()),
        pa.array([part.topic] * n, pa.string()), pa.array([part.partition] * n, pa.int32()),
        pa.array(cols["offset"], pa.int64()), pa.array(cols["timestamp"], schema[5].type),
    ], schema=schema)
