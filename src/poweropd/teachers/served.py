"""A teacher behind an OpenAI-compatible vLLM server: ``--teacher http(s)://HOST:PORT/v1``.

PowerOPD needs one number per sampled token from the teacher, log π_T(o_t | c_t), so the teacher can live on its
own GPUs behind an inference server, as the peers run theirs (TRL's async trainer, verl's teacher pool, slime,
NeMo-RL, ms-swift). One ``/v1/completions`` request per chunk of rows, the rollouts' token ids as the prompts,
``max_tokens: 1`` and ``prompt_logprobs: 0``: the server returns the log-prob of every prompt token, so of every
sampled one (../shared/FINDINGS.md: within 2.1e-5 of an HF forward at temperature 1).

Before anything is written, ``check`` asks the server: that it answers (``/v1/models``, its model and context);
that its tokenizer gives the student's ids for a probe text and for the EOS (``/tokenize``); that the longest
prompt + ``--max-new-tokens`` fits its context; and, when the rollout temperature is not 1, whether it applies
the temperature to prompt log-probs. vLLM does not (the log-probs come back unchanged, 19 nats off at 0.7), and
the tempered log-prob of a token needs the whole distribution, so such a run is refused in one line: training
on log-probs at the wrong temperature is never silent (slime's users did: PRs #2319, #2325).

Faults: a request that fails (no connection, a timeout, a 5xx, an answer without a finite log-prob for every
token) is retried ``retries`` times with exponential backoff; then ``TeacherUnavailable`` names the URL, and the
loop adds the step and the last checkpoint. A step is scored whole or not at all: never with zeros, NaNs or a
part of the rows (training-gym PR #155: a failed teacher gave biased zeros).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import UserError, require
from ..objectives.losses import TeacherScores
from ..rollout.samplers import Rollouts

PROBE_TEXT = "Compute 47 + 18 - 23. The answer is \\boxed{42}.\n"
"""Text whose ids the server's tokenizer must give as the student's does."""


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


@dataclass(frozen=True)
class ServerOptions:
    """How the trainer talks to a served teacher."""

    timeout_s: float = 120.0
    """Seconds one request may take before it counts as failed."""
    retries: int = 4
    """Tries after the first before the run stops (backoff 1, 2, 4, … s)."""
    backoff_s: float = 1.0
    """The first wait between tries; each next one doubles."""
    rows_per_request: int = 32
    """Rows of a step in one request; the requests of a step go out concurrently."""
    concurrency: int = 4
    """Requests in flight at once."""

    def __post_init__(self):
        require(self.timeout_s > 0, "--teacher-timeout", "a number of seconds > 0", self.timeout_s)
        require(self.retries >= 0, "--teacher-retries", "an integer ≥ 0", self.retries)
        require(self.backoff_s >= 0, "teacher backoff", "a number of seconds ≥ 0", self.backoff_s)
        require(self.rows_per_request >= 1, "teacher rows per request", "an integer ≥ 1", self.rows_per_request)
        require(self.concurrency >= 1, "teacher concurrency", "an integer ≥ 1", self.concurrency)


class TeacherUnavailable(UserError):
    """The served teacher did not answer after every retry; nothing of the step was trained on."""


class _Retryable(Exception):
    pass


_ASKS = {"--temperature": "the rollouts are sampled at", "--teacher-temperature": "the teacher's log-probs are asked at"}
"""How the check's message says what asks for a temperature other than 1, by the flag that set it."""


class ServedScorer:
    """log π_T of every sampled token from a vLLM server (the ``Scorer`` protocol, log-probs only)."""

    def __init__(self, url: str, *, options: ServerOptions | None = None, what: str = "--teacher"):
        import httpx

        self.url, self.what = url.rstrip("/"), what
        self.options = options or ServerOptions()
        self._client = httpx.Client(timeout=self.options.timeout_s)
        self.model: str | None = None  # the served model's id, read by ``check``
        self.max_model_len: int | None = None

    @property
    def root(self) -> str:
        """The server's root (``/tokenize`` lives beside ``/v1``)."""
        return self.url.removesuffix("/v1")

    # -- transport ------------------------------------------------------------------------------------------
    def _request(self, method: str, url: str, payload: dict | None = None, *, retries: int | None = None) -> dict:
        import httpx

        retries = self.options.retries if retries is None else retries
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.options.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, url, json=payload)
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}".strip()
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:  # the request itself is wrong: retrying will not help
                raise UserError(f"{self.what} {self.url}: the server refused a request (HTTP "
                                f"{response.status_code}: {response.text[:300]})")  # fmt: skip
            try:
                return response.json()
            except ValueError:
                last = "an answer that is not JSON"
        raise TeacherUnavailable(f"{self.what} {self.url}: no answer after {retries + 1} tries ({last})")

    # -- checks before the run ---------------------------------------------------------------------------------
    def check(self, tokenizer, *, longest: int, temperature: float, flag: str = "--temperature") -> None:
        """The server answers, tokenizes as ``tokenizer`` does, fits ``longest`` positions and, at a temperature
        other than 1 (set by ``flag``), applies it; else one line naming the URL and what was expected."""
        models = self._request("GET", f"{self.url}/models", retries=min(1, self.options.retries))
        try:
            card = models["data"][0]
            self.model, self.max_model_len = card["id"], card.get("max_model_len")
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.what} {self.url}: expected an OpenAI-compatible server listing its model at "
                            f"/v1/models, got {str(models)[:200]}") from None  # fmt: skip
        for text in (PROBE_TEXT, tokenizer.eos_token):
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            theirs = self._request("POST", f"{self.root}/tokenize",
                                   {"model": self.model, "prompt": text, "add_special_tokens": False}).get("tokens")  # fmt: skip
            if theirs != ours:
                raise UserError(f"{self.what} {self.url}: the server's tokenizer ({self.model}) gives {theirs} for "
                                f"{text!r}, the student's {ours} (expected the same tokenizer)")  # fmt: skip
        if self.max_model_len is not None and longest > self.max_model_len:
            raise UserError(f"{self.what} {self.url}: the longest prompt + --max-new-tokens need {longest} positions, "
                            f"beyond the served model's context of {self.max_model_len}")  # fmt: skip
        if temperature != 1.0:
            probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
            at_one, at_t = (self._logprobs([probe], [len(probe) - 1], t)[0] for t in (1.0, temperature))
            if max(abs(a - b) for a, b in zip(at_one, at_t, strict=True)) < 1e-6:
                raise UserError(
                    f"{self.what} {self.url}: the server returns prompt log-probs at temperature 1 whatever the "
                    f"request asks (vLLM does), and {_ASKS[flag]} {flag} {temperature}: expected {flag} 1 with a "
                    "served teacher, or an in-process teacher (a folder or hub id)"
                )

    # -- scoring -------------------------------------------------------------------------------------------
    def _logprobs(self, sequences: list[list[int]], tails: list[int], temperature: float = 1.0) -> list[list[float]]:
        """The log-probs of the last ``tails[i]`` tokens of each sequence, finite, or ``TeacherUnavailable``."""
        payload = {"model": self.model, "prompt": sequences, "max_tokens": 1, "prompt_logprobs": 0,
                   "temperature": temperature}  # fmt: skip
        for attempt in range(self.options.retries + 1):
            answer = self._request("POST", f"{self.url}/completions", payload)
            try:
                return [self._tail(choice, seq, n) for choice, seq, n in
                        zip(self._choices(answer, len(sequences)), sequences, tails, strict=True)]  # fmt: skip
            except _Retryable as err:
                last = str(err)
                if attempt < self.options.retries:
                    time.sleep(self.options.backoff_s * 2**attempt)
        raise TeacherUnavailable(f"{self.what} {self.url}: no complete answer after {self.options.retries + 1} "
                                 f"tries ({last})")  # fmt: skip

    @staticmethod
    def _choices(answer: dict, expected: int) -> list[dict]:
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != expected:
            raise _Retryable(f"{len(choices)} choices for {expected} prompts")
        return choices

    @staticmethod
    def _tail(choice: dict, sequence: list[int], n: int) -> list[float]:
        entries = choice.get("prompt_logprobs") or []
        if len(entries) != len(sequence):
            raise _Retryable(f"{len(entries)} prompt log-probs for {len(sequence)} tokens")
        out = []
        for token, entry in zip(sequence[len(sequence) - n :], entries[len(entries) - n :], strict=True):
            value = (entry or {}).get(str(token), {}).get("logprob")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _Retryable(f"no finite log-prob for token {token} ({value})")
            out.append(float(value))
        return out

    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        if keep_hidden:
            raise UserError(f"{self.what} {self.url}: a served teacher gives the log-probs of the sampled tokens "
                            "only; full_kl needs its whole distribution (use a sampled-token reward, or an "
                            "in-process teacher: a folder or hub id)")  # fmt: skip
        r = rollouts.to("cpu")
        lengths_B = r.response_mask_BT.sum(-1).tolist()
        sequences = [ids[mask.bool()].tolist() for ids, mask in zip(r.input_ids_BL, r.attention_mask_BL)]
        step = self.options.rows_per_request
        chunks = [range(s, min(s + step, len(sequences))) for s in range(0, len(sequences), step)]
        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            parts = list(pool.map(lambda rows: self._logprobs([sequences[b] for b in rows],
                                                              [lengths_B[b] for b in rows]), chunks))  # fmt: skip
        logp_BT = torch.zeros(r.response_mask_BT.shape, dtype=torch.float32)
        for rows, values in zip(chunks, parts, strict=True):
            for b, row in zip(rows, values, strict=True):
                logp_BT[b, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return TeacherScores(logp_BT=logp_BT.to(rollouts.input_ids_BL.device))

    def close(self) -> None:
        self._client.close()
