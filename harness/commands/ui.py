"""`harness ui`: the MLflow UI on the runs store, opened on the runs table with the result columns
shown (a shared view state recorded in the experiment), its address printed once the server answers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.errors import UserError
from harness.tracking.tracking import share_view

VIEW = "kd-harness"  # the shared view's name, in the address `harness ui` prints
# the UI's column ids, TYPE.`NAME`: the result only. MLflow orders the metric columns by name, so cost
# columns shown beside them (extra_parameters, mean_epoch_seconds, ...) came first and pushed top-1 off
# the screen; they stay a click away in the column picker
COLUMNS = ["tags.`cell`", "tags.`seed`", "metrics.`test_top1_last`", "metrics.`test_top1_best_val`"]
START_TIMEOUT = 180  # seconds for the server to answer


def command_ui(args, tracking_uri: str, home: Path) -> int:
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {tracking_uri}; run some cells first")
    experiment = share_view(tracking_uri, VIEW, {"selectedColumns": COLUMNS})
    runs = f"#/experiments/{experiment}/runs?viewStateShareKey={VIEW}&workflowType=machine_learning" if experiment else ""
    # a SIGTERM (a service manager, a test) ends us through `finally`, so that the server ends too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    log = home / "mlflow-ui.log"
    print(f"starting the MLflow UI on the store {tracking_uri}: its server can take a minute to answer on a loaded "
          "machine (it checks the store's tables first)", file=sys.stderr, flush=True)
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                                   "--host", args.host, "--port", str(args.port)], stdout=out, stderr=out)
    try:
        if not answers(f"http://{args.host}:{args.port}/health", server):
            tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
            print(f"harness: the MLflow UI did not start (its log, {log}):\n{tail}", file=sys.stderr)
            return 1
        print(f"MLflow UI on http://{args.host}:{args.port}/{runs} (the runs table: cell, seed, test top-1 "
              f"at the last and the best-validation epoch; store: {tracking_uri}; server log: {log}); Ctrl-C stops it", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def answers(url: str, server: subprocess.Popen) -> bool:
    """Whether the server answers `url` before it exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while server.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False
