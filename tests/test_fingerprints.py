"""Behaviour is unchanged across restructurings: the runs of `fingerprints.py` give the recorded bits."""

from __future__ import annotations

import json

import pytest

from fingerprints import FIXTURE, RUNS, canary, missing_hashes, run_fingerprint

RECORDED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_run_gives_the_recorded_fingerprint(name, tmp_path):
    if canary() != RECORDED["canary"]:
        pytest.skip("this CPU's float32 kernels round differently from the recording machine's")
    recorded, now = RECORDED["runs"][name], run_fingerprint(name, tmp_path)
    assert (now["step"], now["num_updates"]) == (recorded["step"], recorded["num_updates"])
    missing = missing_hashes(recorded["tensors"], now["tensors"])
    assert missing == 0, f"{name}: {missing} of {len(recorded['tensors'])} recorded tensors changed"
