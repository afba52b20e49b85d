"""Sweeps across machines share an Optuna study through PostgreSQL: a real server on 127.0.0.1,
two worker processes, one study. Skips, saying why, where no PostgreSQL server can be started."""

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
        subprocess.run(as_postgres + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                      "optuna"], check=True, capture_output=True)
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
