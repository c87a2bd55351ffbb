"""Whole-step benchmark against TRL, side by side in one run: our `poweropd train` step against TRL's
DistillationTrainer (reverse KL, β = 1), IWOPDTrainer (sampled-token OPD) and, with --gkd, GKDTrainer (λ = 1).

    .venv/bin/pip install -e '.[bench]'            # trl==1.16.0, pinned; never a runtime dependency
    .venv/bin/python benchmarks/vs_trl.py --quick  # 12 min here: 64 new tokens, 4 steps, 3 rounds, no GKD
    .venv/bin/python benchmarks/vs_trl.py --gkd --json benchmarks/results/vs_trl_cpu.json   # 128 tokens: 45 min

Every contestant gets the same models (random Qwen3 student hidden 256 × 4 layers, teacher hidden 384 × 4, at
the Qwen3 vocabulary of 151,936 rows; a 151,669-token tokenizer like Qwen3's), the same prompts (one token
sequence, rendered by our chat template and handed to TRL as text or messages that render the same), batch 8,
the same number of new tokens in every row (TRL: min_new_tokens = max; ours: a random model almost never samples
a stop token, and the mean length is reported), temperature 1, top-k 0, top-p 1, fp32, AdamW (torch's fused
kernel), lr 1e-5 constant, gradient norm clipped at 1, no gradient checkpointing. Each contestant runs in a fresh
process (2 threads); rounds rotate the order so that the machine's load falls on all alike. Per run: the median
of steps 2…N of the step time and of its parts, generation / teacher scoring / update (update = step − the
other two: loss, backward, optimizer), the resident set that the process holds between steps (after step 1:
models and AdamW moments in memory), the peak above it during steps 2…N (Linux VmHWM, reset after step 1), and
the process's whole peak (ru_maxrss).
The table holds the median over rounds.

Where the parts are cut: ours from our own timers (metrics.jsonl: time/sample_s, time/score_s, time/update_s);
TRL's by wrapping its methods from outside (no TRL file is changed): DistillationTrainer `_generate_single_turn`
and the teacher's `_get_last_hidden_state` (its teacher output layer runs inside the loss, as ours does for
full_kl); IWOPDTrainer `_generate_student_completions` and `_get_teacher_logits`; GKDTrainer
`generate_on_policy_outputs` and the teacher's forward. The step is TRL's on_step_begin → on_step_end window.

Before any timing, `check` runs both losses on the same fixed rollouts: our full_kl loss and DistillationTrainer's
compute_loss must agree (reverse KL, token mean over the completion tokens). How the peers count differently is
printed with it: TRL trains on the stop token (ours leaves it out unless --include-stop-token), TRL's KL runs
over every output row (ours over the tokenizer's 151,669 of 151,936), and IWOPDTrainer / GKDTrainer need
`model_accepts_loss_kwargs = False`, or transformers divides their loss by the prompt-only dataset's label count
(0 for IWOPD: loss −inf, then NaN weights) or by the dataset's answer tokens (GKD) instead of the generated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB_ROWS, TOKENIZER_SIZE = 151_936, 151_669
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OURS = {"ours power": ("power", "generate"), "ours full_kl": ("full_kl", "generate"),
        "ours power vllm": ("power", "vllm")}  # name -> (reward, rollout engine); vllm needs vllm installed  # fmt: skip
THEIRS = ("TRL DistillationTrainer", "TRL IWOPDTrainer", "TRL GKDTrainer")
LR, BATCH, THREADS = 1e-5, 8, 2


# ---------------------------------------------------------------------------------------------------------------
# The shared setup: tokenizer, models, prompts
# ---------------------------------------------------------------------------------------------------------------
def make_tokenizer():
    """Characters as tokens, padded with unused tokens to Qwen3's tokenizer size, with a ChatML template."""
    from stepbench.common import char_tokenizer

    return char_tokenizer(TOKENIZER_SIZE, CHATML)


def make_setup(root: Path, n_prompts: int = 64) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_tokenizer()
    for name, hidden, seed in (("student", 256, 0), ("teacher", 384, 1)):
        torch.manual_seed(seed)
        config = Qwen3Config(vocab_size=VOCAB_ROWS, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                             max_position_embeddings=1024, tie_word_embeddings=False)  # fmt: skip
        model = Qwen3ForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # every prompt the same length, so that no contestant pads
    rows = [{"problem": f"Compute {i:02d} + {2 * i:03d}."} for i in range(n_prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def prompts(root: Path) -> tuple[list[str], list[str]]:
    """(problem + instruction as the user turn, the whole rendered prompt) for every problem."""
    from poweropd.data import INSTRUCTION, render_prompt

    tokenizer = make_tokenizer()
    problems = [json.loads(line)["problem"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    return [f"{p}\n{INSTRUCTION}" for p in problems], [render_prompt(tokenizer, p) for p in problems]


# ---------------------------------------------------------------------------------------------------------------
# Memory of this process (Linux)
# ---------------------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Memory:
    """The resident set after step 1 and the peak above it through the last step (VmHWM reset: clear_refs 5).

    After step 1, not before it: AdamW allocates its moments in the first step, and transformers maps the
    weight files lazily, so before step 1 neither is resident yet."""

    def start(self) -> None:
        self.before_mb = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")

    def stop(self) -> None:
        self.peak_mb = _status_mb("VmHWM")

    def report(self) -> dict:
        import resource

        return {
            "held_mb": self.before_mb,
            "peak_above_mb": self.peak_mb - self.before_mb,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


# ---------------------------------------------------------------------------------------------------------------
# Contestants, each run in its own process by `--worker NAME`
# ---------------------------------------------------------------------------------------------------------------
def run_ours(reward: str, engine: str, root: Path, steps: int, new_tokens: int, out: Path) -> dict:
    """`poweropd train`'s own step. The memory marks ride on the run directory's call that logs each step's row."""
    from poweropd import tracking
    from poweropd.cli import main

    memory, lengths = Memory(), []
    log = tracking.RunDir.log_metrics

    def log_then_mark(self, step, metrics):
        if step > 1:
            memory.stop()  # read after every step: the last one counts
        lengths.append(metrics["response_length/mean"])
        log(self, step, metrics)
        if step == 1:
            memory.start()

    tracking.RunDir.log_metrics = log_then_mark
    argv = ["train", "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--data",
            str(root / "prompts.jsonl"), "--output-dir", str(out), "--reward", reward, "--batch-size", str(BATCH),
            "--max-new-tokens", str(new_tokens), "--max-steps", str(steps), "--lr", str(LR), "--save-every", "0",
            "--device", "cpu", "--rollout-engine", engine, "--report-to", "jsonl", "--no-progress"]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError(f"poweropd train {argv} failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "steps": [
            {"step_s": r["time/step_s"], "generate_s": r["time/sync_s"] + r["time/sample_s"],
             "score_s": r["time/score_s"], "sync_s": r["time/sync_s"]}
            for r in rows  # generation includes the engine's weight sync (vLLM), as a peer's would
        ],
        "mean_length": statistics.mean(lengths),
        "loss": [r["loss"] for r in rows],
        **memory.report(),
    }


def _trl_common(out: Path, steps: int) -> dict:
    return dict(output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, max_grad_norm=1.0,
                optim="adamw_torch_fused", weight_decay=0.0, logging_steps=1, report_to="none", save_strategy="no",
                use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0)  # fmt: skip


def run_trl(name: str, root: Path, steps: int, new_tokens: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    users, rendered = prompts(root)
    tokenizer = make_tokenizer()
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=torch.float32)
    times: dict[str, list[float]] = {"generate": [], "score": [], "t0": [], "t1": []}
    memory = Memory()

    def timed(owner, method: str, key: str, when=lambda *a, **k: True) -> None:
        inner = getattr(owner, method)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            result = inner(*args, **kwargs)
            if when(*args, **kwargs) and times[key]:  # into the current step's slot
                times[key][-1] += time.perf_counter() - t
            return result

        setattr(owner, method, wrapper)

    class Marks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if len(times["t0"]) == 1:
                memory.start()
            times["t0"].append(time.perf_counter())
            times["generate"].append(0.0)
            times["score"].append(0.0)

        def on_step_end(self, args, state, control, **kwargs):
            times["t1"].append(time.perf_counter())
            if len(times["t1"]) > 1:
                memory.stop()

    common = _trl_common(out, steps)
    if name == "TRL DistillationTrainer":
        from trl import DistillationConfig, DistillationTrainer

        config = DistillationConfig(**common, beta=1.0, temperature=1.0, top_k=0, top_p=1.0,
                                    max_completion_length=new_tokens, generation_kwargs={"min_new_tokens": new_tokens},
                                    shuffle_dataset=False, use_vllm=False)  # fmt: skip
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                                      train_dataset=Dataset.from_dict({"prompt": rendered}), callbacks=[Marks()])  # fmt: skip
        teacher_model = trainer.accelerator.unwrap_model(trainer.teacher_model)
        timed(trainer, "_generate_single_turn", "generate")
        timed(trainer, "_get_last_hidden_state", "score", when=lambda model, *a, **k: model is teacher_model)
    elif name == "TRL IWOPDTrainer":
        from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer

        config = IWOPDConfig(**common, distillation_objective="iw_opd", lmbda=1.0, temperature=1.0, top_k=0,
                             top_p=1.0, max_completion_length=new_tokens, max_length=1024, use_vllm=False)  # fmt: skip
        teacher.config._name_or_path = str(root / "teacher")  # it loads the teacher's tokenizer from there
        messages = [[{"role": "user", "content": u}] for u in users]
        trainer = IWOPDTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                               train_dataset=Dataset.from_dict({"messages": messages}), callbacks=[Marks()])  # fmt: skip
        trainer.generation_config.min_new_tokens = new_tokens
        trainer.model_accepts_loss_kwargs = False  # else the loss divides by 0 prompt-only label tokens
        timed(trainer, "_generate_student_completions", "generate")
        timed(trainer, "_get_teacher_logits", "score")
    elif name == "TRL GKDTrainer":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(
            **common, lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=new_tokens, max_length=1024
        )
        # GKD's collator wants an assistant turn; fully on-policy (λ = 1) it is replaced by the sample
        messages = [[{"role": "user", "content": u}, {"role": "assistant", "content": "0"}] for u in users]
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict({"messages": messages}), callbacks=[Marks()])  # fmt: skip
        trainer.generation_config.min_new_tokens = new_tokens
        trainer.model_accepts_loss_kwargs = False  # else the loss divides by the dataset's answer tokens
        timed(trainer, "generate_on_policy_outputs", "generate")
        timed(trainer.teacher_model, "forward", "score")
    else:
        raise ValueError(name)

    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = [h[k] for h in logs for k in ("completions/mean_length",) if k in h]
    return {
        "steps": [
            {"step_s": t1 - t0, "generate_s": g, "score_s": s}
            for t0, t1, g, s in zip(times["t0"], times["t1"], times["generate"], times["score"], strict=True)
        ],
        "mean_length": statistics.mean(lengths) if lengths else float(new_tokens),
        "loss": [h["loss"] for h in logs],
        **memory.report(),
    }


# ---------------------------------------------------------------------------------------------------------------
# The loss-agreement check: our full_kl loss and DistillationTrainer's reverse KL on the same rollouts
# ---------------------------------------------------------------------------------------------------------------
def check(root: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=torch.float32)
    _, rendered = prompts(root)
    return loss_agreement(student, teacher, tokenizer, rendered[:4], root / "check")[0]


def loss_agreement(student, teacher, tokenizer, rendered: list[str], out: Path) -> tuple[dict, dict]:
    """Our full_kl loss and DistillationTrainer's compute_loss (β = 1) on the same fixed rollouts: 4 rows of 24
    random tokens, two of them stopped early (TRL's completion mask runs up to and including the stop token).
    The teacher's output layer is sharpened ×30 first, so that reverse and forward KL differ clearly.
    Returns the report and the rollout tensors (prompt_ids_BP, completion_BC, completion_mask_BC)."""
    import torch
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from poweropd.config import RewardConfig
    from poweropd.losses import make_objective
    from poweropd.rollout import build_rollouts
    from poweropd.teacher import HFScorer
    from poweropd.update import compute_gradients

    with torch.no_grad():
        teacher.lm_head.weight.mul_(30.0)
    prompt_ids_BP = torch.tensor([tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered])
    B = prompt_ids_BP.shape[0]
    g = torch.Generator().manual_seed(0)
    completion_BC = torch.randint(3, len(tokenizer), (B, 24), generator=g)
    eos = tokenizer.eos_token_id
    completion_mask_BC = torch.ones_like(completion_BC)
    for row, stop in ((1, 6), (2, 15)):  # rows 1 and 2 stop; the others run to the end
        completion_BC[row, stop] = eos
        completion_mask_BC[row, stop + 1 :] = 0

    config = DistillationConfig(**_trl_common(out, 1), beta=1.0, temperature=1.0, use_vllm=False)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_dict({"prompt": rendered}))  # fmt: skip
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, {
            "prompt_ids": prompt_ids_BP, "prompt_mask": torch.ones_like(prompt_ids_BP),
            "completion_ids": completion_BC, "completion_mask": completion_mask_BC,
        }).item()  # fmt: skip

    rollouts = build_rollouts(torch.cat([prompt_ids_BP, completion_BC], 1), torch.ones_like(prompt_ids_BP), (eos,),
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    scores = HFScorer(teacher).score(rollouts, keep_hidden=True, logprobs=False)
    objective = make_objective(RewardConfig(name="full_kl"))

    def ours(include_stop_token: bool, vocab_size: int | None) -> float:
        student.zero_grad(set_to_none=True)
        return compute_gradients(student, rollouts, scores, objective, micro_batch_size=B,
                                 include_stop_token=include_stop_token,
                                 vocab_size=vocab_size).loss  # fmt: skip

    same = ours(include_stop_token=True, vocab_size=None)
    report = {
        "trl_reverse_kl": theirs,
        "ours_full_kl_same_tokens": same,
        "relative_difference": abs(same - theirs) / abs(theirs),
        "ours_default_without_stop_token": ours(include_stop_token=False, vocab_size=None),
        "ours_over_the_tokenizer_range": ours(include_stop_token=True, vocab_size=len(tokenizer)),
        "loss_tokens": {"trl": int(completion_mask_BC.sum()), "ours": int(rollouts.loss_mask(False).sum())},
    }
    report["agrees"] = report["relative_difference"] < 1e-5
    batch = {
        "prompt_ids_BP": prompt_ids_BP,
        "completion_BC": completion_BC,
        "completion_mask_BC": completion_mask_BC,
    }
    return report, batch


# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------
def worker(args) -> None:
    import torch

    torch.set_num_threads(THREADS)
    root, out = Path(args.setup), Path(args.out)
    if args.worker == "check":
        result = check(root)
    elif args.worker in OURS:
        result = run_ours(*OURS[args.worker], root, args.steps, args.new_tokens, out.parent / "run")
    else:
        result = run_trl(args.worker, root, args.steps, args.new_tokens, out.parent / "run")
    out.write_text(json.dumps(result))


def spawn(name: str, root: Path, tmp: Path, steps: int, new_tokens: int) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    out = folder / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", name, "--setup", str(root), "--out", str(out), "--steps", str(steps),
           "--new-tokens", str(new_tokens)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def summarise(run: dict) -> dict:
    timed = run["steps"][1:]  # step 1 warms up (allocations, lazy init)
    med = {k: statistics.median(s.get(k, 0.0) for s in timed) for k in ("step_s", "generate_s", "score_s", "sync_s")}
    med["update_s"] = statistics.median(s["step_s"] - s["generate_s"] - s["score_s"] for s in timed)
    med["no_generate_s"] = statistics.median(s["step_s"] - s["generate_s"] for s in timed)
    return {**med, **{k: run[k] for k in ("held_mb", "peak_above_mb", "process_peak_mb", "mean_length")}}


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("trl", "transformers", "torch", "accelerate")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 4 steps, no GKD (12 min here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 6; --quick 4)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="tokens per row (default 128; --quick 64)"
    )
    parser.add_argument(
        "--gkd", action="store_true", help="also GKDTrainer (slow: it scores full logits twice)"
    )
    parser.add_argument("--contestants", default=None,
                        help="comma list of the contestants to run (default: all but GKD unless --gkd)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.quick else 6)
    args.new_tokens = args.new_tokens or (64 if args.quick else 128)
    if args.worker:
        return worker(args)
    if args.steps < 2:
        parser.error("--steps: expected 2 or more (step 1 is not timed)")

    contestants = [*OURS, *THEIRS[: 3 if args.gkd else 2]]
    if args.contestants:
        contestants = [c.strip() for c in args.contestants.split(",")]
        if unknown := set(contestants) - {*OURS, *THEIRS}:
            parser.error(f"--contestants: unknown {sorted(unknown)}; expected names from {[*OURS, *THEIRS]}")
    print(f"versions: {versions()}; batch {BATCH}, {args.new_tokens} new tokens, {args.steps} steps (median of "
          f"2…{args.steps}), {args.rounds} rounds, {THREADS} threads", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "setup"
        make_setup(root)
        agreement = spawn("check", root, tmp, args.steps, args.new_tokens)
        print(f"loss agreement (reverse KL on fixed rollouts): TRL {agreement['trl_reverse_kl']:.6f}, ours "
              f"{agreement['ours_full_kl_same_tokens']:.6f} (relative difference {agreement['relative_difference']:.1e});"
              f" ours by default leaves out the stop token ({agreement['loss_tokens']['ours']} of "
              f"{agreement['loss_tokens']['trl']} tokens: {agreement['ours_default_without_stop_token']:.6f}) and "
              f"sums over the tokenizer's {TOKENIZER_SIZE:,} of {VOCAB_ROWS:,} rows "
              f"({agreement['ours_over_the_tokenizer_range']:.6f})", flush=True)  # fmt: skip
        if not agreement["agrees"]:
            raise SystemExit(
                "the reverse-KL losses disagree: not timing contestants that compute different things"
            )
        rounds: dict[str, list[dict]] = {c: [] for c in contestants}
        for r in range(args.rounds):
            order = contestants[r % len(contestants) :] + contestants[: r % len(contestants)]
            for name in order:
                rounds[name].append(summarise(spawn(name, root, tmp, args.steps, args.new_tokens)))
                row = rounds[name][-1]
                print(f"round {r + 1} {name}: step {row['step_s']:.2f} s (generate {row['generate_s']:.2f}), peak "
                      f"above held {row['peak_above_mb']:,.0f} MB", flush=True)  # fmt: skip
    table = {
        name: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for name, runs in rounds.items()
    }
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "args": {k: v for k, v in vars(args).items()
                                         if k not in ("json", "worker", "setup", "out")}, "agreement": agreement,
                                         "rounds": rounds, "median": table}, indent=1) + "\n")  # fmt: skip


def print_table(table: dict) -> None:
    print("\n| contestant | step s | generate s | score s | update s | step without generation s | held between "
          "steps MB | peak above it MB | process peak MB | mean length |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in table.items():
        print(f"| {name} | {m['step_s']:.2f} | {m['generate_s']:.2f} | {m['score_s']:.2f} | {m['update_s']:.2f} | "
              f"{m['no_generate_s']:.2f} | {m['held_mb']:,.0f} | {m['peak_above_mb']:,.0f} | "
              f"{m['process_peak_mb']:,.0f} | {m['mean_length']:.1f} |")  # fmt: skip
    if "TRL DistillationTrainer" not in table:
        return
    peer = table["TRL DistillationTrainer"]
    if "ours power vllm" in table:
        m = table["ours power vllm"]
        print(f"\nours power vllm: weight sync {m['sync_s']:.2f} s = {m['sync_s'] / m['step_s']:.1%} of its step "
              f"(target ≤ 10%); step / DistillationTrainer {m['step_s'] / peer['step_s']:.2f} (target ≤ 0.5)")  # fmt: skip
    print("\nratios ours / DistillationTrainer (targets: power step ≤ 0.6, power peak above held ≤ 0.5, full_kl step"
          " ≤ 0.8):")  # fmt: skip
    for ours in (o for o in OURS if o in table):
        m = table[ours]
        print(f"  {ours}: step {m['step_s'] / peer['step_s']:.2f}, step without generation "
              f"{m['no_generate_s'] / peer['no_generate_s']:.2f}, peak above held "
              f"{m['peak_above_mb'] / peer['peak_above_mb']:.2f}, process peak "
              f"{m['process_peak_mb'] / peer['process_peak_mb']:.2f}")  # fmt: skip
    if "TRL IWOPDTrainer" not in table or "ours power" not in table:
        return
    iw = table["TRL IWOPDTrainer"]
    m = table["ours power"]
    print(f"  ours power / IWOPDTrainer (the sampled-token peer): step {m['step_s'] / iw['step_s']:.2f}, step without "
          f"generation {m['no_generate_s'] / iw['no_generate_s']:.2f}, peak above held "
          f"{m['peak_above_mb'] / iw['peak_above_mb']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
