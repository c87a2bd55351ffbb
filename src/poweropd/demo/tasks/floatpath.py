"""One floating-point path for the task recipe and the demo's runs, whatever x86 CPU they run on.

The same seed and torch wheel once gave a task teacher of 0.993 on one machine and 0.94 on another: training
follows the CPU's float paths (MKL picks its GEMM kernels per CPU; torch picks AVX2 or AVX-512 kernels), and a
recipe near a cliff falls off it. Worker processes started inside ``pinned()`` get:

- ``MKL_CBWR=AVX2,STRICT``: MKL's conditional numerical reproducibility, the AVX2 code branch on every CPU
  that has it (bit-identical results across such CPUs is what CNR promises);
- ``ATEN_CPU_CAPABILITY=avx2``: torch's own vectorised kernels at AVX2, also on AVX-512 machines;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: the same for oneDNN;
- one thread per process (set by the workers), so no reduction depends on the thread count.

On the machine the shipped task models were made on these settings change nothing (measured: an SFT run gives
the same weights with and without them, at the same speed); the fully portable settings (``COMPATIBLE``,
``default``) were 2.3× slower. ``fingerprint()`` hashes a short training run on the pinned path, so a test
can tell whether it is on the same float path as the machine that made the shipped files.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

PINNED_ENV = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """Processes started inside this block run on the pinned float path (their environment is copied at
    start); the caller's environment is restored afterwards. Libraries read these variables once, when they
    load, so the calling process itself is not affected."""
    before = {key: os.environ.get(key) for key in PINNED_ENV}
    os.environ.update(PINNED_ENV)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def pinned_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of fresh (spawned) processes on the pinned float path. The environment stays pinned while the
    pool is open, since the pool may start its processes late (on demand)."""
    with pinned(), ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _is_pinned(_: int = 0) -> bool:
    return all(os.environ.get(key) == value for key, value in PINNED_ENV.items())


def _fingerprint_here() -> str:
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, fused=True)
    x = torch.randn(8, 24, 64, generator=generator)
    for _ in range(3):
        loss = layer(x).square().mean() + torch.nn.functional.scaled_dot_product_attention(x, x, x).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    digest = hashlib.sha256()
    for p in layer.parameters():
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint() -> str:
    """A hash of three AdamW steps of a small transformer layer (GEMMs, attention, softmax, layer norm), run in
    a fresh process on the pinned path: equal hashes mean the same float path for this kind of training."""
    with pinned_pool(1) as pool:
        return pool.submit(_fingerprint_here).result()
