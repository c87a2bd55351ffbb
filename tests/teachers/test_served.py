"""A teacher behind a real vLLM server on localhost (served.py), and several teachers routed per row.

The server (vLLM's OpenAI-compatible one, CPU build) serves the head-size-32 teacher of test_vllm's pair; a
small forwarding proxy stands in front of it where a test needs the server to stop answering mid-run.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import metric_rows
from safetensors.torch import load_file

from poweropd.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(head32_pair):
    """(student_dir, teacher_dir, prompts_jsonl) at head size 32; each row names a teacher, "big" or "self"."""
    return head32_pair


@pytest.fixture(scope="module")
def server(pair):
    """The teacher served by vLLM on a free localhost port; yields its /v1 URL."""
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(pair[1]), "--served-model-name",
           "tiny-teacher", "--dtype", "float32", "--max-logprobs", "20", "--max-model-len", "1024", "--host",
           "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the vLLM server did not answer within 240 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Proxy:
    """Forwards to ``target``; after ``completions`` completion requests it stops listening (a dead server)."""

    def __init__(self, target: str, completions: int):
        import httpx

        proxy, self.left = self, completions

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                if self.path.endswith("/completions"):
                    proxy.left -= 1
                    if proxy.left < 0:  # the server is gone: no answer, and no more listening
                        threading.Thread(target=proxy.die).start()
                        self.close_connection = True
                        return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                answer = httpx.request(method, target.removesuffix("/v1") + self.path, content=body,
                                       headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.dead = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def die(self):
        """Stop serving and close the listening socket: later connections are refused, as by a dead server."""
        if not self.dead:
            self.dead = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def close(self):
        self.die()


def _train(pair, out, teacher_args, *extra):
    student, _, prompts = pair
    return ["train", "--student", str(student), *teacher_args, "--data", str(prompts), "--output-dir", str(out),
            "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-3", "--no-progress", "--reward", "power",
            "--alpha", "2", "--save-every", "2", "--teacher-retries", "1", "--teacher-timeout", "20", *extra]  # fmt: skip



def test_served_logprobs_equal_the_in_process_teachers(pair, server):
    from transformers import AutoModelForCausalLM

    from poweropd.models.hf import load_tokenizer
    from poweropd.rollout.samplers import HFSampler, SamplingConfig
    from poweropd.teachers.scorers import HFScorer
    from poweropd.teachers.served import ServedScorer

    tokenizer = load_tokenizer(str(pair[0]))
    student = AutoModelForCausalLM.from_pretrained(pair[0])
    teacher = AutoModelForCausalLM.from_pretrained(pair[1])
    torch.manual_seed(0)
    prompts = [tokenizer(f"<|im_start|>user\nCompute {i} + 1.<|im_end|>\n")["input_ids"] for i in range(6)]
    rollouts = HFSampler(student, 0, SamplingConfig(stop_token_ids=(2,), max_new_tokens=24)).sample(prompts, n=2)
    served = ServedScorer(server)
    served.check(tokenizer, longest=100, temperature=1.0)
    assert served.model == "tiny-teacher"
    a = served.score(rollouts).logp_BT
    b = HFScorer(teacher).score(rollouts).logp_BT
    mask = rollouts.response_mask_BT
    assert mask.sum() > 100 and (a - b)[mask].abs().max() < 1e-4


def test_a_served_teachers_first_step_equals_the_in_process_one(pair, server, tmp_path):
    assert main(_train(pair, tmp_path / "served", ["--teacher", server], "--max-steps", "1")) == 0
    assert main(_train(pair, tmp_path / "local", ["--teacher", str(pair[1])], "--max-steps", "1")) == 0
    (s,), (loc,) = metric_rows(tmp_path / "served"), metric_rows(tmp_path / "local")
    for key in ("reward/mean", "reward/min", "reward/max", "log_ratio/mean", "loss"):
        assert abs(s[key] - loc[key]) < 1e-4, (key, s[key], loc[key])
    assert s["response_length/mean"] == loc["response_length/mean"]  # the same rollouts


def test_a_server_that_dies_mid_run_stops_it_in_one_line_and_resume_ends_as_uninterrupted(pair, server, tmp_path, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_train(pair, straight, ["--teacher", server], "--max-steps", "4")) == 0
    proxy = Proxy(server, completions=3)  # steps 1-3 scored, then the server is gone
    try:
        code = main(_train(pair, broken, ["--teacher", proxy.url], "--max-steps", "4"))
    finally:
        proxy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert proxy.url in err[0] and "at step 4" in err[0] and "step-2" in err[0] and "--resume" in err[0]
    assert [r["step"] for r in metric_rows(broken)] == [1, 2, 3]  # step 4 was never trained on or logged
    # the server is back at another URL: the same served model, so --resume accepts it
    assert main(_train(pair, broken, ["--teacher", server], "--max-steps", "4", "--resume")) == 0
    a, b = (load_file(d / "final" / "model.safetensors") for d in (straight, broken))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metric_rows(straight)] == [r["loss"] for r in metric_rows(broken)]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [(["--temperature", "0.7"], "temperature 1 whatever the request asks"),
     (["--teacher-temperature", "0.7"], "the teacher's log-probs are asked at --teacher-temperature 0.7"),
     (["--reward", "full_kl"], "full_kl needs the teacher's whole distribution"),
     (["--reward", "log_ratio", "--reward-baseline", "kl"], "the kl baseline needs the teacher's whole distribution")],
)  # fmt: skip
def test_what_a_served_teacher_cannot_do_is_refused_in_one_line(pair, server, tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    assert main(_train(pair, out, ["--teacher", server], "--max-steps", "1", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and server in err[0], err
    assert not out.exists()


def test_a_server_down_at_start_is_one_line(pair, tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    out = tmp_path / "run"
    assert main(_train(pair, out, ["--teacher", url], "--max-steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "no answer after 2 tries" in err[0], err
    assert not out.exists()


def test_each_row_is_scored_by_its_teacher(pair, server, tmp_path, capsys):
    """Odd rows go to the served teacher, even rows to the student itself as a teacher: its log ratio is 0 at
    step 1, before the student moves."""
    out = tmp_path / "routed"
    teachers = ["--teacher", f"big={server}", "--teacher", f"self={pair[0]}"]
    assert main(_train(pair, out, teachers, "--max-steps", "3", "--batch-size", "8")) == 0
    rows = metric_rows(out)
    assert abs(rows[0]["teacher/self/log_ratio/mean"]) < 1e-5 < 1e-2 < abs(rows[0]["teacher/big/log_ratio/mean"])
    for row in rows:
        assert row["teacher/self/tokens"] + row["teacher/big/tokens"] == row["tokens/valid"]
        assert row["teacher/self/tokens"] > 0 and row["teacher/big/tokens"] > 0
    state = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["teachers"] == {"big": "served:tiny-teacher", "self": str(pair[0])}
    # a changed set of teachers is refused on --resume
    changed = ["--teacher", f"big={server}", "--teacher", f"self={pair[1]}"]
    assert main(_train(pair, out, changed, "--max-steps", "4", "--batch-size", "8", "--resume")) == 2
    assert "expected the same names and models" in capsys.readouterr().err
    # a row naming no known teacher
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "Compute 1 + 1.", "teacher": "big"}) + "\n"
                   + json.dumps({"problem": "Compute 2 + 2.", "teacher": "nobody"}) + "\n")  # fmt: skip
    args = _train((pair[0], pair[1], bad), tmp_path / "bad", teachers, "--max-steps", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2" in err[0] and "'nobody'" in err[0], err
