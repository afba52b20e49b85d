"""`harness perf`: the standing speed record: every method's step under each option set, and the
accuracy cost of each option on one cell over seeds."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.performance import perf
from harness.spec.options import RunOptions

PAIR = "digits/hinton1200-hinton800"


def test_speedups_and_ratios_come_from_the_bench_tables(monkeypatch):
    """Golden: with bench's tables given, each option's speed-up is fp32's step over its own, per method."""
    ms = {"fp32": {"baseline": 10.0, "kd": 20.0, "lpl": 25.0}, "channels-last": {"baseline": 8.0, "kd": 10.0, "lpl": 20.0}}

    def fake_bench(runner, dataset, pair, methods, opts, steps, warmup):
        times = ms["channels-last" if opts.channels_last else "fp32"]
        frame = pd.DataFrame([{"method": m, "path": "harness", "ms_per_step": t} for m, t in times.items()]
                             + [{"method": "kd", "path": "bare loop", "ms_per_step": 2 * times["kd"]}])
        frame["vs_kd"] = frame.ms_per_step / times["kd"]
        frame.attrs["harness_over_bare"] = 0.5
        return frame

    monkeypatch.setattr("harness.performance.bench.bench", fake_bench)
    monkeypatch.setattr(perf, "runnable_methods", lambda runner, dataset, pair: ["baseline", "kd", "lpl"])
    sets = {"fp32": {}, "channels-last": {"channels_last": True}}
    frame = perf.step_times(None, [("digits", "p")], sets, RunOptions(), 1, 0).set_index(["options", "method", "path"]).sort_index()
    assert frame.loc[("channels-last", "kd", "harness"), "speedup_vs_eager"] == pytest.approx(2.0)
    assert frame.loc[("channels-last", "lpl", "harness"), "speedup_vs_eager"] == pytest.approx(1.25)
    assert frame.loc[("channels-last", "kd", "bare loop"), "speedup_vs_eager"] == pytest.approx(2.0)
    assert (frame.loc["fp32", "speedup_vs_eager"] == 1.0).all()


def test_perf_records_every_method_and_each_options_accuracy(home, capsys):
    out = home / "record.md"
    argv = ["perf", "--bench", PAIR, "--cell", f"{PAIR}/kd", "--seeds", "2", "--options", "fp32", "channels-last",
            "--smoke", "--steps", "2", "--warmup", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert main(["list", "--dataset", "digits"]) == 0
    methods = [c.split("/")[-1] for c in capsys.readouterr().out.split() if c.startswith(PAIR + "/")]
    assert {"kd", "fitnet", "nmt", "lpl"} <= set(methods)
    for method in methods:
        assert f"| {method} " in text
    assert "| kd          | bare loop |" in text and "Harness KD step / bare KD loop: fp32" in text
    accuracy = text.split("## The accuracy cost of each option")[1]
    assert "| fp32 " in accuracy and "| channels-last " in accuracy
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.cell = '{PAIR}/kd' and attributes.status = 'FINISHED'")
    assert len(runs) == 4  # two seeds under each option set: two configurations
    assert len({r.data.tags["config_key"] for r in runs}) == 2


@pytest.mark.parametrize("extra, expected", [
    (["--seeds", "1"], "at least 2"),
    (["--compile"], "sets the speed options itself"),
    (["--bench", "digits/nopair"], "unknown teacher-student pair"),
    (["--cell", "digits/resnet20-resnet8/nope"], "unknown method"),
    (["--steps", "0"], "--steps"),
])
def test_perf_user_errors(home, capsys, extra, expected):
    assert main(["perf", "--smoke", *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (home / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()])
