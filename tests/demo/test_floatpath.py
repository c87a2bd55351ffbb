"""The pinned float path: what the recipe's and the demo's worker processes run on."""

import os

from poweropd.demo.tasks import floatpath


def test_pinned_sets_the_variables_for_children_and_restores_the_caller(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    with floatpath.pinned():
        assert {k: os.environ[k] for k in floatpath.PINNED_ENV} == floatpath.PINNED_ENV
    assert os.environ["MKL_CBWR"] == "AUTO" and "ATEN_CPU_CAPABILITY" not in os.environ


def test_pool_workers_run_pinned_and_the_fingerprint_is_deterministic(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    with floatpath.pinned_pool(2) as pool:
        assert all(pool.map(floatpath._is_pinned, range(4)))  # every worker, also one started late
    assert "ATEN_CPU_CAPABILITY" not in os.environ and not floatpath._is_pinned()
    first, second = floatpath.fingerprint(), floatpath.fingerprint()
    assert first == second and len(first) == 16
