"""The load test (benchmarks/load.py) at a small size: a real server on loopback, clients mixing
every route while jobs run; no job is lost or stuck, no request gets a 5xx or a reset connection."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_a_small_load_loses_nothing_and_answers_every_request(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "LOAD.json").read_text())
    assert report["server_alive_after"]
    jobs = report["jobs"]
    assert jobs["accepted"] > 0 and jobs["lost"] == 0 and jobs["stuck"] == 0
    assert jobs["succeeded"] + jobs["canceled"] + jobs["failed"] == jobs["accepted"]
    for route, figures in report["routes"].items():
        assert figures["transport_errors"] == 0, route
        assert not any(code.startswith("5") for code in figures["statuses"]), (route, figures["statuses"])
    assert sum(figures["requests"] for figures in report["routes"].values()) == report["setup"]["requests"]
