"""The contestants, each run in its own process by ``vs_trl.py --worker NAME``: our ``poweropd train`` step
and TRL's trainers, timed by parts from outside."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from .common import BATCH, LR, Memory, make_tokenizer, prompts, trl_common

OURS = {"ours power": ("power", "generate"), "ours full_kl": ("full_kl", "generate"),
        "ours power vllm": ("power", "vllm")}  # name -> (reward, rollout engine); vllm needs vllm installed  # fmt: skip
THEIRS = ("TRL DistillationTrainer", "TRL IWOPDTrainer", "TRL GKDTrainer")


def run_ours(reward: str, engine: str, root: Path, steps: int, new_tokens: int, out: Path) -> dict:
    """`poweropd train`'s own step. The memory marks ride on the run directory's call that logs each step's row."""
    from poweropd.cli import main
    from poweropd.run import rundir as tracking

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

    common = trl_common(out, steps)
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
