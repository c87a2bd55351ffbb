"""Running a mode: one process per mode, the timed steps, peak memory (RSS sampler on CPU, CUDA counters)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .common import BenchConfig, build_context
from .modes import MODES

STEP_BENCH = Path(__file__).resolve().parents[1] / "step_bench.py"  # the script that runs one mode


# ---------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------
class RSSPeak:
    """Peak resident set size above the RSS at entry, sampled by a background thread (CPU)."""

    def __init__(self, interval_s: float = 2e-4):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)

    def rss(self) -> int:
        return int(os.pread(self.fd, 128, 0).split()[1]) * self.page

    def __enter__(self):
        _malloc_trim()
        self.before = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra_bytes = self.peak - self.before


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CudaPeak:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize(self.device)
        self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self.before


def run_worker(mode_name: str, cfg: BenchConfig) -> dict:
    """Warm-up, ``cfg.repeats`` timed steps (CUDA: with their peak memory), then on the CPU ``cfg.repeats``
    steps under the RSS sampler for the peak memory; one mode, in this process."""
    import torch

    from poweropd.config.sections import OptimConfig
    from poweropd.training.update import make_optimizer

    ctx = build_context(cfg)
    mode = MODES[mode_name]
    # the training loop's optimizer (fused AdamW), the same for every mode
    optimizer = make_optimizer(ctx.student.parameters(), OptimConfig(lr=1e-6), torch.device(cfg.device))
    cuda = cfg.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        scores = mode.score(ctx)
        sync()
        t1 = time.perf_counter()
        loss = mode.update(ctx, scores)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del scores
        sync()
        return loss, t1 - t0, time.perf_counter() - t1

    for _ in range(cfg.warmup):
        step()
    samples = {key: [] for key in SAMPLE_KEYS}
    for _ in range(cfg.repeats):  # timed steps; on CUDA the peak counter costs nothing, so measured here too
        meter = CudaPeak(torch.device(cfg.device)) if cuda else contextlib.nullcontext()
        cpu0 = time.process_time()
        with meter:
            loss, t_score, t_update = step()
        samples["times"].append(t_score + t_update)
        samples["score_times"].append(t_score)
        samples["update_times"].append(t_update)
        samples["cpu_times"].append(time.process_time() - cpu0)
        samples["losses"].append(loss)
        if cuda:
            samples["peaks_mb"].append(meter.extra_bytes / 2**20)
    for _ in range(0 if cuda else cfg.repeats):
        # CPU memory in separate steps: the RSS sampler thread polls every 0.2 ms and would slow the timed
        # steps (on 2 cores a step took ~1.5× as long with it)
        with RSSPeak() as meter:
            step()
        samples["peaks_mb"].append(meter.extra_bytes / 2**20)
    return summarize(samples) | {"threads": torch.get_num_threads()}


# per-step samples a worker returns, and the medians reported from them
SAMPLE_KEYS = ("times", "peaks_mb", "score_times", "update_times", "cpu_times", "losses")
MEDIANS = {
    "time_s": "times",
    "peak_mb": "peaks_mb",
    "score_s": "score_times",
    "update_s": "update_times",
    "cpu_s": "cpu_times",
}


def summarize(samples: dict[str, list]) -> dict:
    return {key: statistics.median(samples[src]) for key, src in MEDIANS.items()} | samples


def merge_rounds(results: list[dict]) -> dict:
    """One mode's results from several fresh processes: the samples pooled, medians over all of them."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    samples = {key: [v for r in results for v in r[key]] for key in SAMPLE_KEYS}
    return summarize(samples) | {"threads": results[0]["threads"], "rounds": len(results)}


def run_mode_subprocess(mode_name: str, cfg: BenchConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(STEP_BENCH),
            "--worker",
            mode_name,
            "--worker-out",
            str(out),
            *config_flags(cfg),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"worker exited with {proc.returncode}", "stderr_tail": tail}
        return json.loads(out.read_text())


def config_flags(cfg: BenchConfig) -> list[str]:
    flags = []
    for key, value in asdict(cfg).items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags
