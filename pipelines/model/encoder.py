"""The text encoder at run time: ONNX Runtime + ``tokenizers``, nothing else.

An encoder folder is what ``models/export_minilm.py`` builds (and what MLflow stores for a
``lakerec-text-encoder`` version): ``model.onnx`` or ``model.int8.onnx``, ``tokenizer.json``
and ``manifest.json`` (``max_length``, ``dim``). The graph does the mean pooling and the L2
normalisation, so its output rows are unit vectors and cosine similarity is a dot product.

Sessions are cached per Python process, keyed by (model SHA-256, providers, threads): Spark reuses
its Python workers across tasks (``spark.python.worker.reuse``), so an executor core builds its
``InferenceSession`` once, not once per batch or task.

Example
-------
>>> enc = Encoder.load("models/build/minilm", variant="int8")     # doctest: +SKIP
>>> enc.encode(["Deluxe Espresso Grinder", "Trail running shoes"]).shape  # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_SESSIONS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def item_text(title: str | None, category: str | None, description: str | None) -> str:
    """The text an item is embedded from: ``"<title>. <category>. <description>"``.

    Missing parts are left out; this one function defines the text for the embed job, the
    incremental check (its hash) and the tests.
    """
    parts = [p.strip() for p in (title, category, description) if p and p.strip()]
    return ". ".join([p.rstrip(". ") for p in parts[:-1]] + parts[-1:])


def choose_providers(available: Iterable[str], gpu_addresses: Sequence[str] | None, *,
                     device: str = "auto") -> list:
    """ONNX Runtime providers for a task.

    CUDA on the task's first granted GPU (``TaskContext.resources()["gpu"].addresses``) when
    ``device`` allows it, the GPU build of onnxruntime is installed and the task was granted a
    GPU; else CPU. ``device="cuda"`` without both is an error rather than a silent CPU run.

    >>> choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["1"])
    [('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
    >>> choose_providers(["CPUExecutionProvider"], ["0"])
    ['CPUExecutionProvider']
    >>> choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], None)
    ['CPUExecutionProvider']
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    available = list(available)
    if device != "cpu" and CUDA in available and gpu_addresses:
        return [(CUDA, {"device_id": int(gpu_addresses[0])}), CPU]
    if device == "cuda":
        why = "onnxruntime has no CUDA provider (install onnxruntime-gpu)" \
            if CUDA not in available else "the task was granted no GPU"
        raise RuntimeError(f"device=cuda but {why}")
    return [CPU]


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not an encoder folder (no manifest.json): build it "
                                f"with `make models` (models/export_minilm.py)")
    with open(path) as f:
        return json.load(f)


@dataclass(frozen=True)
class Bundle:
    """Everything a worker needs to encode, as bytes: shipped to executors in a broadcast, so
    no shared filesystem is assumed. ``key`` (the model's SHA-256) keys the session cache."""

    manifest: dict
    tokenizer_json: str
    model: bytes
    key: str

    @classmethod
    def from_folder(cls, folder: str, variant: str | None = None) -> Bundle:
        """``variant`` picks the file of an export folder (default ``int8``); a registered
        version's folder holds one model, named by its manifest."""
        import hashlib

        manifest = read_manifest(folder)
        if variant is None and "model_file" in manifest:
            file = manifest["model_file"]
        elif (variant or "int8") in MODEL_FILES:
            file = MODEL_FILES[variant or "int8"]
        else:
            raise ValueError(f"variant must be one of {sorted(MODEL_FILES)}, not {variant!r}")
        with open(os.path.join(folder, file), "rb") as f:
            model = f.read()
        with open(os.path.join(folder, "tokenizer.json")) as f:
            tok = f.read()
        return cls(manifest, tok, model, hashlib.sha256(model).hexdigest())


def session(bundle: Bundle, providers: list, threads: int):
    """A cached ``onnxruntime.InferenceSession`` (one per process, model and settings)."""
    key = (bundle.key, repr(providers), threads)
    with _LOCK:
        s = _SESSIONS.get(key)
        if s is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            # one task = its own threads; inter-op parallelism would oversubscribe the cores
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            s = ort.InferenceSession(bundle.model, opts, providers=providers)
            log.info("ONNX Runtime session for model %s on %s, %d intra-op threads",
                     bundle.key[:12], s.get_providers()[0], threads)
            _SESSIONS[key] = s
        return s


@dataclass
class Encoder:
    """A tokenizer and an ONNX Runtime session; :meth:`encode` maps texts to unit vectors."""

    tokenizer: object
    session: object
    dim: int
    max_length: int

    @classmethod
    def load(cls, source: str | Bundle, *, variant: str | None = None,
             threads: int | None = None, device: str = "auto",
             gpu_addresses: Sequence[str] | None = None) -> Encoder:
        """The encoder of a folder or :class:`Bundle`.

        ``threads`` defaults to 1; ``device`` as in :func:`choose_providers`, on
        ``gpu_addresses`` (the embed UDF passes its Spark task's CPUs and GPUs).
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        bundle = source if isinstance(source, Bundle) else Bundle.from_folder(source, variant)
        tok = Tokenizer.from_str(bundle.tokenizer_json)
        # the shipped tokenizer.json pads every text to 128 tokens; pad to the batch's longest
        # instead (titles are ~10 tokens: fixed padding costs ~8x) and truncate where
        # sentence-transformers does
        tok.enable_truncation(max_length=int(bundle.manifest["max_length"]))
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        providers = choose_providers(ort.get_available_providers(), gpu_addresses,
                                     device=device)
        sess = session(bundle, providers, threads or 1)
        return cls(tok, sess, int(bundle.manifest["dim"]), int(bundle.manifest["max_length"]))

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors.

        Texts are run in order of token length, so each batch pads to similar lengths; the
        rows come back in the input order.
        """
        out = np.empty((len(texts), self.dim), np.float32)
        if not len(texts):
            return out
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lens = np.array([sum(e.attention_mask) for e in encs])
        order = np.argsort(lens, kind="stable")
        for s in range(0, len(order), batch_size):
            sel = order[s:s + batch_size]
            n = int(lens[sel].max())
            ids = np.array([encs[i].ids[:n] for i in sel], np.int64)
            mask = np.array([encs[i].attention_mask[:n] for i in sel], np.int64)
            out[sel] = self.session.run(["embedding"], {"input_ids": ids,
                                                        "attention_mask": mask})[0]
        return out


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def describe(manifest: Mapping) -> str:
    return f"{manifest.get('name', '?')} ({manifest.get('dim')}-d, max {manifest.get('max_length')}"\
        f" tokens)"
