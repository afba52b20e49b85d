"""The GPU acceptance script's CPU mode, so that it cannot rot between lent GPUs (issue #27)."""

from __future__ import annotations

import json
import os
import subprocess
import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.long
def test_the_acceptance_script_runs_on_the_cpu(tmp_path):
    out = tmp_path / "acceptance"
    env = {k: v for k, v in os.environ.items() if k != "KD_HARNESS_DATA"}
    result = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--device", "cpu", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "acceptance.json").read_text())
    assert not report["errors"]
    methods = {row["method"] for row in report["methods"]}
    assert methods == set(__import__("harness.spec.spec", fromlist=["load_spec"]).load_spec().methods)
    assert all(row["status"] == "ok" for row in report["methods"])
    assert {row["options"] for row in report["methods"]} == {"fp32", "bf16", "fp16"}
    assert report["resume"]["identical"] and report["resume"]["epochs_logged"] == [3, 3]
    assert report["bench"][0]["harness_over_bare"] > 0 and report["folder"]["images_per_s"] > 0
    text = (out / "ACCEPTANCE.md").read_text()
    assert "## Every method under each option set" in text and "harness kd step / bare kd loop" in text
