"""Teacher scoring through a vLLM server against in process, side by side in one run.

    .venv/bin/python benchmarks/served_bench.py        # SmolLM2-135M-Instruct, 32 rollouts × 128 tokens, ~4 min

The same rollouts (sampled once from the model, GSM8K prompts) are scored each round by the in-process
teacher (``HFScorer``, the trainer's threads) and by the same model behind vLLM's OpenAI-compatible server
(``ServedScorer``, one request of all rows) on this machine; the rounds alternate, and the table gives the
median time over the rounds after one warm-up each. Here the server shares the trainer's two cores, so this
measures the cost of the transfer and the server's own scoring; on a real cluster the server has its own GPU,
and the trainer's scoring time goes to zero while the server scores.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def start_server(folder: Path, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
           "teacher", "--dtype", "float32", "--max-logprobs", "20", "--max-model-len", "2048", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the vLLM server did not start within 300 s")


def main() -> None:
    import torch

    from poweropd.data import encode_prompts, read_jsonl
    from poweropd.models.hf import load_causal_lm, load_tokenizer, resolve_model, stop_token_ids
    from poweropd.rollout.samplers import SamplingConfig
    from poweropd.rollout.vllm_engine import VLLMSampler
    from poweropd.teachers.scorers import HFScorer
    from poweropd.teachers.served import ServedScorer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(resolve_model(args.model))
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model)
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
    prompts = encode_prompts(tokenizer, [r["problem"] for r in read_jsonl(data)][: args.rows])
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, stop_token_ids=tuple(stop_token_ids(tokenizer)))
    sampler = VLLMSampler(model, tokenizer.pad_token_id, config)
    torch.manual_seed(0)
    rollouts = sampler.sample(prompts)
    sampler.close()
    tokens = int(rollouts.response_mask_BT.sum())
    proc, url = start_server(folder, args.threads)
    try:
        served = ServedScorer(url)
        served.check(tokenizer, longest=rollouts.input_ids_BL.shape[1], temperature=1.0)
        local = HFScorer(model)
        times = {"in process": [], "served": []}
        for r in range(args.rounds + 1):
            for name, scorer in (("in process", local), ("served", served))[:: 1 if r % 2 else -1]:
                start = time.perf_counter()
                logp = scorer.score(rollouts).logp_BT
                if r:
                    times[name].append(time.perf_counter() - start)
                if name == "served":
                    served_logp = logp
                else:
                    local_logp = logp
        diff = (served_logp - local_logp)[rollouts.response_mask_BT].abs().max().item()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    base = statistics.median(times["in process"])
    print(f"{args.model}: {args.rows} rollouts, {tokens} response tokens, {args.threads} threads; served and "
          f"in-process log-probs differ by at most {diff:.1e}")  # fmt: skip
    print("| scorer | s per step (median) | rounds | vs in process |\n|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
