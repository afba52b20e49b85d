"""`harness ui` (issue #32 item 13): its address is printed once the server answers, and opens the runs
table in model-training mode with the result columns shown (a shared view state in the experiment)."""

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from harness.commands.ui import COLUMNS, VIEW


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_ui_prints_its_address_once_it_answers_and_shows_the_result_columns(home, tmp_path):
    home.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.create_experiment("kd-harness")
    run = client.create_run(experiment, tags={"role": "student", "cell": "digits/resnet20-resnet8/kd"},
                            run_name="kd · digits/resnet20-resnet8 · seed 0")
    for key, value in (("test_top1_last", 96.5), ("test_top1_best_val", 96.25), ("mean_epoch_seconds", 1.5), ("peak_memory_mb", 512.0)):
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--home", str(home), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = next(line for line in proc.stdout if "http://" in line)  # after the line saying it starts
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()  # it answers already
        url = re.search(r"http://\S+", line).group(0)
        assert url == (f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?viewStateShareKey={VIEW}"
                       "&workflowType=machine_learning")
        state = client.get_experiment(experiment).tags[f"mlflow.sharedViewState.{VIEW}"]
        assert json.loads(state) == {"selectedColumns": COLUMNS}
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("Debian's chromium is not installed: the page itself is not checked")
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,900", "--virtual-time-budget=30000"]
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        assert "kd · digits/resnet20-resnet8 · seed 0" in dom, dom[-2000:]
        assert "test_top1_last" in dom and "test_top1_best_val" in dom  # hidden in MLflow's default view
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert f"--port {port}" not in subprocess.run(["ps", "-eo", "cmd"], capture_output=True, text=True).stdout
