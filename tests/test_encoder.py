"""The ONNX text encoder at run time: the real MiniLM export on real text, no Spark.

Needs the export (``make models``): the reference embeddings are PyTorch's, saved by the
export, so these tests hold the runtime path (``tokenizers`` + ONNX Runtime, no torch) to the
original model.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.model.encoder import CPU, CUDA, Bundle, Encoder, choose_providers, item_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "models", "build", "minilm")


@pytest.fixture(scope="module")
def reference():
    if not os.path.exists(os.path.join(BUILD, "manifest.json")):
        pytest.fail(f"no encoder export in {BUILD}: run `make models`")
    ref = np.load(os.path.join(BUILD, "reference.npz"))
    return [str(s) for s in ref["sentences"]], ref["embeddings"]


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_matches_pytorch_and_int8_matches_fp32(reference):
    texts, torch_emb = reference
    fp32 = Encoder.load(BUILD, variant="fp32", threads=2).encode(texts, batch_size=8)
    int8 = Encoder.load(BUILD, variant="int8", threads=2).encode(texts, batch_size=8)
    assert fp32.shape == (len(texts), 384) and fp32.dtype == np.float32
    assert cosines(fp32, torch_emb).mean() >= 0.999
    assert cosines(int8, fp32).mean() >= 0.98
    # the graph normalises: unit rows, so cosine is a dot product downstream
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)


def test_batching_and_order_do_not_change_an_embedding(reference):
    texts, _ = reference
    enc = Encoder.load(BUILD, variant="fp32", threads=1)
    together = enc.encode(texts, batch_size=5)
    alone = np.stack([enc.encode([t])[0] for t in texts[:6]])
    np.testing.assert_allclose(together[:6], alone, atol=2e-5)
    shuffled = enc.encode(texts[::-1], batch_size=64)[::-1]
    np.testing.assert_allclose(together, shuffled, atol=2e-5)


def test_similar_texts_are_closer_than_unrelated_ones():
    enc = Encoder.load(BUILD, threads=1)
    a, b, c = enc.encode(["Trail running shoes with a grippy sole",
                          "Lightweight shoes for running on muddy trails",
                          "Organic green tea, 100 bags"])
    assert a @ b > a @ c + 0.3


def test_sessions_are_reused_per_process_and_settings():
    bundle = Bundle.from_folder(BUILD, "int8")
    assert Encoder.load(bundle, threads=1).session is Encoder.load(bundle, threads=1).session
    assert Encoder.load(bundle, threads=2).session is not Encoder.load(bundle, threads=1).session


def test_the_runtime_needs_neither_torch_nor_transformers():
    code = f"""
import sys
for m in ("torch", "transformers", "sentence_transformers"):
    sys.modules[m] = None  # any import of them now fails
from pipelines.model.encoder import Encoder
import jobs.embed, pipelines.batch.embed
v = Encoder.load({BUILD!r}, threads=1).encode(["Deluxe espresso grinder"])
assert v.shape == (1, 384), v.shape
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("available, gpus, device, expected", [
    ([CUDA, CPU], ["1"], "auto", [(CUDA, {"device_id": 1}), CPU]),
    ([CUDA, CPU], ["3", "0"], "cuda", [(CUDA, {"device_id": 3}), CPU]),
    ([CUDA, CPU], None, "auto", [CPU]),        # the task was granted no GPU
    ([CUDA, CPU], [], "auto", [CPU]),
    ([CPU], ["0"], "auto", [CPU]),             # CPU build of onnxruntime
    ([CUDA, CPU], ["0"], "cpu", [CPU]),        # forced CPU
])
def test_provider_selection(available, gpus, device, expected):
    assert choose_providers(available, gpus, device=device) == expected


def test_provider_selection_refuses_a_cuda_request_it_cannot_serve():
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        choose_providers([CPU], ["0"], device="cuda")
    with pytest.raises(RuntimeError, match="no GPU"):
        choose_providers([CUDA, CPU], None, device="cuda")
    with pytest.raises(ValueError):
        choose_providers([CPU], None, device="tpu")


def test_task_gpus_outside_a_task_is_none():
    from pipelines.batch.embed import task_cpus, task_gpus

    assert task_gpus() is None and task_cpus(3) == 3


@pytest.mark.parametrize("parts, text", [
    (("Deluxe Grinder", "kitchen", "Grinds coffee."), "Deluxe Grinder. kitchen. Grinds coffee."),
    (("Deluxe Grinder.", None, "Grinds coffee."), "Deluxe Grinder. Grinds coffee."),
    (("  Deluxe Grinder ", "", None), "Deluxe Grinder"),
    ((None, None, None), ""),
])
def test_item_text(parts, text):
    assert item_text(*parts) == text


def test_a_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make models"):
        Encoder.load(str(tmp_path))


def test_the_gpu_discovery_script_speaks_sparks_format(tmp_path):
    import json

    script = os.path.join(ROOT, "pipelines", "runtime", "conf", "gpu_discovery.sh")
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "1, 3"}
    out = subprocess.run([script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": ["1", "3"]}
    # no GPU, no nvidia-smi: an empty list, exit 0
    out = subprocess.run(["/bin/bash", script], capture_output=True, text=True,
                         env={"PATH": str(tmp_path)}, check=True)
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": []}
