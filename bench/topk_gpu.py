"""The top-K kernel on a GPU (PyTorch) against the CPU kernel, same factors, same seen lists.

    python bench/topk_gpu.py [--users 50000] [--items 20000] [--rank 64] [--k 10] [--seen 25]

Needs numpy, numba and torch with CUDA (no Spark). Prints wall times, the speed-up, the
GPU's share of its own fp32 GEMM rate measured in the same run, and how often the two
kernels' lists are identical (the rest differ only among scores equal to float32 precision).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.model import topk  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seen", type=int, default=25, help="seen items per user")
    p.add_argument("--block", type=int, default=256, help="CPU block")
    a = p.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    # factor-like data: a popularity direction plus noise, so scores have a long head
    users = (rng.standard_normal((a.users, a.rank)) * 0.3 + 0.1).astype(np.float32)
    items = (rng.standard_normal((a.items, a.rank)) * 0.3
             + rng.pareto(2.0, (a.items, 1)) * 0.05).astype(np.float32)
    seen = [rng.choice(a.items, a.seen, replace=False) for _ in range(a.users)]
    indptr = np.arange(0, (a.users + 1) * a.seen, a.seen, dtype=np.int64)
    indices = np.concatenate(seen).astype(np.int64)
    key = topk.order_key([f"item-{j:07d}" for j in range(a.items)])
    flops = 2.0 * a.users * a.items * a.rank
    print(f"{a.users:,} users x {a.items:,} items, rank {a.rank}, k={a.k}, "
          f"{a.seen} seen per user; {torch.cuda.get_device_name()}; {os.cpu_count()} CPU cores")

    def csr(s0, s1):
        return indptr[s0:s1 + 1] - indptr[s0], indices[indptr[s0]:indptr[s1]]

    index = topk.index_items(items, key)
    # compile (and load SciPy's BLAS, which the kernel calls) before limiting threads
    topk.topk_block(users[:8], index, csr(0, 8), a.k)
    with threadpool_limits(1):
        t = time.perf_counter()
        ci, cs, _ = topk.topk_block(users, index, (indptr, indices), a.k, block=a.block)
        cpu_t = time.perf_counter() - t

    dev = torch.as_tensor(items, device="cuda")
    gpu_block = max(1, min(65536, (1 << 28) // a.items))
    for _ in range(2):  # warm-up, then timed
        torch.cuda.synchronize()
        t = time.perf_counter()
        gpu = [topk.topk_block_torch(users[s:s + gpu_block], dev,
                                     csr(s, min(a.users, s + gpu_block)), a.k, key)
               for s in range(0, a.users, gpu_block)]
        torch.cuda.synchronize()
        gpu_t = time.perf_counter() - t
    gi = np.concatenate([g[0] for g in gpu])
    gs = np.concatenate([g[1] for g in gpu])

    u_dev = torch.as_tensor(users, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in range(0, a.users, gpu_block):
            u_dev[s:s + gpu_block] @ dev.T
        torch.cuda.synchronize()
        gemm_t = time.perf_counter() - t

    same = (gi == ci).all(axis=1).mean()
    print(f"CPU kernel, 1 thread:   {cpu_t:8.3f} s  ({flops / cpu_t / 1e9:6.1f} GFLOP/s)")
    print(f"GPU kernel (incl. host transfers and ordering): {gpu_t:8.3f} s  "
          f"({flops / gpu_t / 1e9:7.1f} GFLOP/s) -> {cpu_t / gpu_t:.0f}x the CPU kernel")
    print(f"GPU fp32 GEMM alone, same blocks: {gemm_t:.3f} s ({flops / gemm_t / 1e12:.1f} "
          f"TFLOP/s) -> the kernel reaches {gemm_t / gpu_t:.0%} of it")
    print(f"identical lists: {same:.4%} of users; max |score diff| "
          f"{np.nanmax(np.abs(np.where(np.isfinite(cs), gs - cs, 0))):.2e}")


if __name__ == "__main__":
    main()
