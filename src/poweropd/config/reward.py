"""The ``reward`` section of a run: the training method, its hyperparameters and token selection.

Split from config/sections.py (one section, but the one with the most logic: labels, schedules, the registry's
hyperparameters); ``from poweropd.config.sections import RewardConfig, methods`` still works. Each hyperparameter's
default, range, flag and help come from its record in rewards.REWARDS (rewards.HParam).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import UserError, require
from ..objectives.rewards import REWARDS
from .flags import arg, check_choice, where


def methods() -> tuple[str, ...]:
    """Every training method: the registry's sampled-token rewards (read now: a registered reward counts),
    plus the objectives that are not one (objectives.losses.OBJECTIVES: the full-vocabulary reverse KL)."""
    from ..objectives.losses import OBJECTIVES

    return (*REWARDS, *OBJECTIVES)


TOKEN_SELECTORS = ("entropy",)
BASELINES = ("kl",)
"""Values of ``--reward-baseline``."""
BASELINE_REWARDS = ("log_ratio",)
"""The rewards a baseline applies to (vOPD's control variate keeps the expectation of the log ratio only)."""


def _default(field_name: str) -> float:
    """A reward hyperparameter's default, from its record (rewards.HParam)."""
    return next(hp.default for r in REWARDS.values() for hp in r.settings.values() if hp.field == field_name)


@dataclass(frozen=True)
class RewardConfig:
    name: str = arg("power", flag="--reward", choices=lambda: methods(), more=lambda: _reward_help())
    """Training method: a reward of poweropd.objectives.rewards.REWARDS or full_kl."""
    # The rewards' hyperparameters: each field is the config.yaml key of an HParam of rewards.REWARDS, whose
    # record gives its default, range, flag and help (flags.add_reward_hparams); a reward registered with a new
    # hyperparameter needs no field here: its value lives in ``extra`` under its HParam.field.
    alpha: float = arg(_default("alpha"), special=True)
    """α (rewards.REWARDS: power, proximal)."""
    alpha_end: float | None = arg(None, flag="--alpha-schedule", special=True)
    """α at the last step (--alpha-schedule A0:A1): α moves geometrically from ``alpha`` to it over training."""
    clip_low: float = arg(_default("clip_low"), special=True)
    """Lower bound of the clip reward."""
    clip_high: float = arg(_default("clip_high"), special=True)
    """Upper bound of the clip reward."""
    tanh_tau: float = arg(_default("tanh_tau"), special=True)
    """Temperature of the tanh reward."""
    baseline: str | None = arg(None, flag="--reward-baseline", choices=("kl",))
    """A control-variate baseline added to the reward: ``kl`` adds the detached exact reverse KL(π_S‖π_T) at each
    position (vOPD, "KL for a KL", arXiv 2605.07865): E_{o~π_S}[log π_T(o) − log π_S(o)] = −KL, so the log-ratio
    reward keeps its expectation and loses variance. Only for log_ratio: a bounded reward is not linear in the
    log ratio, and the baseline would change what it trains toward. Needs one in-process teacher (its whole
    distribution, as full_kl)."""
    token_select: str | None = arg(None, metavar="entropy:K")
    """Train on a fraction of the tokens only: ``entropy:K`` keeps the fraction K of each micro-batch's valid
    tokens with the highest student entropy (TIP: token importance in OPD); None keeps every token."""
    extra: dict[str, float] = arg(factory=dict, special=True)
    """Hyperparameters of registered rewards that have no field above: {HParam.field: value}."""

    def __post_init__(self):
        check_choice(self, "name")
        record, own = self.record, {f.name for f in fields(self)}
        params = {}  # each hyperparameter checked by the chosen reward's record, else by the first that has it
        for r in (record, *REWARDS.values()) if record else REWARDS.values():
            for hp in r.settings.values():
                params.setdefault(hp.field, hp)
        require(set(self.extra) <= params.keys() - own, "reward.extra",
                f"hyperparameters of a registered reward ({', '.join(sorted(params.keys() - own))})", self.extra)  # fmt: skip
        for key, hp in params.items():
            for name in (key, "alpha_end") if key == "alpha" else (key,):
                value = self._value(hp) if name == key else self.alpha_end
                if value is not None:
                    require(hp.accepts(value), self._where(name), hp.expected(), value)
        takes_alpha = [name for name, r in REWARDS.items() if "alpha" in r.hparams]
        require(self.alpha_end is None or self.name in takes_alpha, where(self, "alpha_end"),
                f"a reward that takes --alpha ({', '.join(takes_alpha)})", self.name)  # fmt: skip
        for r in REWARDS.values():
            if r.rule is not None:
                names = [hp.field for hp in r.hparams.values()]
                values = {kw: self._value(hp) for kw, hp in r.hparams.items()}
                require(r.rule[1](values), self._where(*names), r.rule[0], tuple(values.values()))
        if self.baseline is not None:
            check_choice(self, "baseline")
            require(self.name in BASELINE_REWARDS, where(self, "baseline"),
                    f"--reward {' or '.join(BASELINE_REWARDS)} (the baseline keeps the expectation of the log-ratio "
                    "reward only)", f"{self.baseline} with --reward {self.name}")  # fmt: skip
        if self.token_select is not None:
            kind, _, fraction = self.token_select.partition(":")
            ok = kind in TOKEN_SELECTORS and _is_fraction(fraction) and self.name in REWARDS
            require(ok, where(self, "token_select"), "entropy:K with K in (0, 1], for a sampled-token reward",
                    self.token_select)  # fmt: skip

    def _value(self, hp) -> float:
        return (
            getattr(self, hp.field)
            if hp.field in self.__dataclass_fields__
            else self.extra.get(hp.field, hp.default)
        )

    def _where(self, *names: str) -> str:
        if all(name in self.__dataclass_fields__ for name in names):
            return where(self, *names)
        return f"reward.{'/'.join(names)} ({'/'.join('--' + n.replace('_', '-') for n in names)})"

    @property
    def record(self):
        """The reward's registry record (None for full_kl)."""
        return REWARDS.get(self.name)

    def hparams_at(self, progress: float = 0.0) -> dict[str, float]:
        """Keyword arguments of the registry function, with α at ``progress`` ∈ [0, 1] of the run."""
        if self.record is None:
            return {}
        values = {kw: self._value(hp) for kw, hp in self.record.hparams.items()}
        if self.alpha_end is not None:  # geometric: equal ratios per step, as α spans decades
            values["alpha"] = self.alpha * (self.alpha_end / self.alpha) ** min(max(progress, 0.0), 1.0)
        return values

    @property
    def hparams(self) -> dict[str, float]:
        return self.hparams_at(0.0)

    @property
    def strength_hparams(self) -> dict[str, float]:
        """Keyword arguments of the reward's strength update (rewards.Strength; TV-OPD), {} without one."""
        strength = self.record.strength if self.record is not None else None
        return {kw: self._value(hp) for kw, hp in strength.hparams.items()} if strength else {}

    @property
    def select_fraction(self) -> float | None:
        return float(self.token_select.partition(":")[2]) if self.token_select else None

    @property
    def label(self) -> str:
        """Method id in reports and ``poweropd demo --methods``: power@10, power@1:10, power@10+entropy:0.5."""
        if self.record is None:
            return self.name
        label = self.record.label(self.hparams)
        if self.alpha_end is not None:
            label += f":{self.alpha_end:g}"
        label += f"+{self.baseline}" if self.baseline else ""
        return label + (f"+{self.token_select}" if self.token_select else "")

    @classmethod
    def from_label(cls, label: str) -> RewardConfig:
        """The inverse of ``label``: "power@1:10+entropy:0.5" -> RewardConfig(power, alpha=1, alpha_end=10, ...);
        "log_ratio+kl": the log ratio with vOPD's baseline."""
        body, *options = label.split("+")
        name, _, alphas = body.partition("@")
        baseline = [o for o in options if o in BASELINES]
        select = [o for o in options if o not in BASELINES]
        if len(baseline) > 1 or len(select) > 1:
            raise UserError(f"method {label}: expected name@alpha[:alpha_end][+kl][+entropy:K]")
        fields_ = {"name": name, "baseline": baseline[0] if baseline else None,
                   "token_select": select[0] if select else None}  # fmt: skip
        if alphas:
            first, _, last = alphas.partition(":")
            try:
                fields_["alpha"] = float(first)
                fields_["alpha_end"] = float(last) if last else None
            except ValueError:
                raise UserError(f"method {label}: expected name@alpha[:alpha_end][+kl][+entropy:K]") from None
        return cls(**fields_)


def _is_fraction(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def _reward_help() -> str:
    return "; ".join(f"{name}: {record.citation}" for name, record in REWARDS.items()) + (
        "; full_kl: the exact reverse KL at every position"
    )
