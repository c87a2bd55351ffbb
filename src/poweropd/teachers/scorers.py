"""Teacher scoring behind a small ``Scorer`` protocol: an in-process HF model (``HFScorer``), a vLLM server
(served.ServedScorer), and several teachers routed per prompt row (``RoutedScorer``, multi-teacher OPD).

``load_teachers`` builds them from the configuration and checks each against the student before anything is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..models.hf import output_layer, sampled_logprobs
from ..objectives.logprobs import DEFAULT_CHUNK_SIZE
from ..objectives.losses import TeacherScores
from ..rollout.samplers import Rollouts


class Scorer(Protocol):
    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        """``logprobs=False`` skips the teacher's output layer: a full-vocabulary loss that gets the hidden
        states (``keep_hidden``) computes the teacher's log-probs with the KL, chunk by chunk."""
        ...


class HFScorer:
    """Scores rollouts with a frozen causal LM in eval mode, without gradients, on its own device."""

    def __init__(
        self, model, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE, forward=None
    ):  # fmt: skip
        """``forward(fn, *args)`` runs ``fn(model, *args)``: through FSDP's root when the teacher is sharded
        (``sharding.ShardedModel.run_frozen``), a plain call otherwise."""
        self.model = model.eval().requires_grad_(False)
        self.temperature, self.chunk_size = temperature, chunk_size
        self.forward = forward or (lambda fn, *args: fn(self.model, *args))

    @torch.no_grad()
    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        r = rollouts.to(next(self.model.parameters()).device)
        return self.forward(self._score, r, keep_hidden, logprobs)

    def _score(self, model, r: Rollouts, keep_hidden: bool, logprobs: bool) -> TeacherScores:
        logp_BT, hidden_BTH = sampled_logprobs(
            model, r, temperature=self.temperature, chunk_size=self.chunk_size, logprobs=logprobs
        )
        if not keep_hidden:
            return TeacherScores(logp_BT=logp_BT)
        return TeacherScores(logp_BT, hidden_BTH, output_layer(model), temperature=self.temperature)


class RoutedScorer:
    """Several teachers: row b of the rollouts is scored by ``scorers[rollouts.teacher_B[b]]`` (MOPD: one teacher
    per domain, routed per prompt, as TRL's ``teacher_model={...}``, verl's ``teacher_key`` and NeMo-RL do)."""

    def __init__(self, scorers: dict[str, Scorer]):
        self.scorers = scorers

    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        names = rollouts.teacher_B
        if names is None or len(names) != rollouts.input_ids_BL.shape[0]:
            raise ValueError("RoutedScorer: expected rollouts.teacher_B, one teacher name per row")
        logp_BT = torch.zeros(
            rollouts.response_mask_BT.shape, dtype=torch.float32, device=rollouts.input_ids_BL.device
        )
        for name in sorted(set(names)):
            rows_R = torch.tensor([b for b, n in enumerate(names) if n == name], device=logp_BT.device)
            part = self.scorers[name].score(rollouts.select(rows_R)).logp_BT
            logp_BT[rows_R] = part.to(logp_BT.device, torch.float32)
        return TeacherScores(logp_BT=logp_BT)


@dataclass
class Teacher:
    """One configured teacher: its scorer, its model when in process, and what identifies it on --resume (a
    served teacher's model id, so that it may move to another URL; else its spec)."""

    name: str
    spec: str
    scorer: Any
    model: Any = None
    identity: str = ""

    @property
    def flag(self) -> str:
        return f"--teacher {self.name}={self.spec}" if self.name else f"--teacher {self.spec}"


def load_teachers(cfg, student_tokenizer, *, longest: int, device, temperature: float, chunk_size: int,
                  needs_hidden: str | None, temperature_flag: str = "--temperature") -> dict[str, Teacher]:  # fmt: skip
    """Every configured teacher, checked against the student (tokenizer; a server's context and temperature);
    ``temperature`` is the teacher's (set by ``temperature_flag``); ``needs_hidden``: the flag of an objective
    that needs a teacher's whole distribution (``--reward full_kl``, ``--reward-baseline kl``), which only one
    in-process teacher gives."""
    from ..errors import UserError
    from ..models.hf import check_pair, load_causal_lm, load_tokenizer
    from .served import ServedScorer, is_url

    specs, teachers = cfg.teacher_specs, {}
    remote = {"trust_remote_code": cfg.trust_remote_code}
    for name, spec in specs.items():
        what = f"--teacher {name}=" if name else "--teacher"
        if is_url(spec):
            scorer = ServedScorer(spec, options=cfg.server_options, what=what.rstrip("="))
            scorer.check(student_tokenizer, longest=longest, temperature=temperature, flag=temperature_flag)
            teachers[name] = Teacher(name, spec, scorer, identity=f"served:{scorer.model}")
            continue
        tokenizer = load_tokenizer(spec, what=what, **remote)
        check_pair(student_tokenizer, tokenizer, student=cfg.student, teacher=spec)
        model = load_causal_lm(spec, dtype=cfg.dtype, device=device, what=what, **remote)
        teachers[name] = Teacher(name, spec, HFScorer(model, temperature=temperature, chunk_size=chunk_size),
                                 model, identity=spec)  # fmt: skip
    if needs_hidden and (len(teachers) > 1 or next(iter(teachers.values())).model is None):
        what = "full_kl" if needs_hidden == "--reward full_kl" else f"the {needs_hidden.split()[-1]} baseline"
        instead = "a sampled-token reward such as power or log_ratio" if what == "full_kl" else "no " + needs_hidden.split()[0]
        raise UserError(f"{needs_hidden} with {' '.join(t.flag for t in teachers.values())}: {what} needs the "
                        "teacher's whole distribution, which only one in-process teacher gives (expected "
                        f"{instead}, or one --teacher that is a folder or hub id)")  # fmt: skip
    return teachers
