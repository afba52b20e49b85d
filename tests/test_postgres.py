"""PostgreSQL, a real server on 127.0.0.1: sweeps across machines share an Optuna study (two worker
processes, one study), and run ledgers import into a PostgreSQL-backed MLflow store. Skips, saying
why, where no PostgreSQL server can be started."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    if not PG_BIN or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql)")
    bin_dir = PG_BIN[-1]
    # the server refuses to run as root: as root, run it as the postgres user, in a directory it can reach
    tmp_path = Path(tempfile.mkdtemp(prefix="kd-harness-pg-"))
    data = tmp_path / "pgdata"
    data.mkdir()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        tmp_path.chmod(0o755)
        shutil.chown(tmp_path, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    init = subprocess.run(as_postgres + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[:200]}")
    start = subprocess.run(as_postgres + [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(tmp_path / "log"),
                                          "-o", f"-p {port} -k {tmp_path} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[:200]}")
    try:
        for database in ("optuna", "mlflow"):  # the two keep an alembic_version table each: one database each
            subprocess.run(as_postgres + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                          "postgres", database], check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_postgres + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.long
def test_two_workers_share_a_postgresql_study(home, postgres):
    import optuna

    env = dict(os.environ, KD_HARNESS_HOME=str(home))
    subprocess.run([sys.executable, "-m", "harness", "teacher", "digits/resnet20", "--no-progress"], env=env,
                   check=True, capture_output=True)
    cmd = [sys.executable, "-m", "harness", "sweep", "--cell", "digits/resnet20-resnet8/kd", "--trials", "3",
           "--epochs", "1", "--pruner", "none", "--storage", postgres, "--study", "pg"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.long
def test_a_ledger_imports_into_a_postgresql_store_and_reports_the_same(home, postgres, tmp_path, monkeypatch, capsys):
    """The deploy setup's store (docker-compose.yml: MLflow on PostgreSQL) takes a committed ledger,
    twice without adding a run, and reports from it what the ledger reports."""
    from harness.cli import main

    ledger = Path(__file__).resolve().parent.parent / "results" / "digits" / "runs.jsonl"
    uri = postgres.rsplit("/", 1)[0] + "/mlflow"
    monkeypatch.chdir(tmp_path)
    assert main(["--tracking-uri", uri, "import", str(ledger)]) == 0
    assert main(["--tracking-uri", uri, "import", str(ledger)]) == 0
    out = capsys.readouterr().out
    assert "imported 22 runs" in out and "imported 0 runs" in out and "22 already there" in out
    assert main(["--tracking-uri", uri, "report", "--suite", "digits", "--out", "store.md"]) == 0
    assert main(["report", "--from", str(ledger), "--suite", "digits", "--out", "ledger.md"]) == 0
    assert (tmp_path / "store.md").read_text() == (tmp_path / "ledger.md").read_text()
