"""Disk (issue #32 item 16): finished runs keep their checkpoints until `harness clean` removes
them; unfinished runs and cached teachers are kept; `--force` says that it keeps the teacher."""

from harness.cli import main


def test_clean_removes_only_finished_runs_checkpoints(home, capsys):
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke"]) == 0
    finished = sorted((home / "runs").glob("*/checkpoints/ckpt-*.pt"))
    assert len(finished) == 2  # the teacher's run and the student's: kept after they finished
    interrupted = home / "runs" / "not-finished" / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "ckpt-000000.pt").write_bytes(b"x" * 1000)
    capsys.readouterr()
    assert main(["clean", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would remove the checkpoints of 2 finished runs (")
    assert all(p.exists() for p in finished)
    assert main(["clean"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed the checkpoints of 2 finished runs (") and "kept those of 1 unfinished" in out
    assert not any(p.exists() for p in finished) and (interrupted / "ckpt-000000.pt").exists()
    assert len(list((home / "teachers").glob("*.safetensors"))) == 1
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke"]) == 0  # still answered as finished
    assert "already finished" in capsys.readouterr().out
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--force"]) == 0
    err = capsys.readouterr().err
    assert "--force: training the requested runs again from scratch; cached teachers are kept" in err
    assert "training teacher" not in err
