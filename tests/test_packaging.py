"""A built wheel carries benchmarks.yaml and runs without the repository."""

import subprocess
import sys
import sysconfig
import zipfile

from conftest import REPO


def test_wheel_ships_the_spec_and_lists_cells(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kd_harness-*.whl")
    assert "harness/benchmarks.yaml" in zipfile.ZipFile(wheel).namelist()
    zipfile.ZipFile(wheel).extractall(tmp_path / "installed")
    # -S: no site processing, so the editable install's import hook cannot shadow the wheel's copy;
    # the dependencies come from this interpreter's site-packages, the harness from the wheel only
    env = {"PYTHONPATH": f"{tmp_path / 'installed'}:{sysconfig.get_paths()['purelib']}",
           "KD_HARNESS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    code = ("import harness.spec.spec as s, sys; assert 'installed' in s.__file__, s.__file__; "
            "from harness.cli import main; sys.exit(main(['list', '--suite', 'positive_control']))")
    listed = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.split() == ["mnist1k/hinton1200-hinton800/baseline", "mnist1k/hinton1200-hinton800/kd"]
