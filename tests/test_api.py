"""The Python API (harness/api.py): run_cell takes the run options as keywords, and a mistake is a
UserError that leaves no run behind."""

import pytest
from mlflow.tracking import MlflowClient

from harness import UserError, run_cell

BASELINE, KD = "digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd"


def runs(home):
    if not (home / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_run_cell_takes_progress_as_a_keyword(home):
    (record,) = run_cell(BASELINE, progress=False, smoke=True)
    assert record["status"] == "FINISHED" and record["seed"] == 0 and "test_top1_last" in record


@pytest.mark.parametrize("keywords, expected", [
    ({"nosuch": 1}, "has no hyperparameter 'nosuch'"),  # neither a run option nor a hyperparameter
    ({"seed": 1}, "seed is not a keyword of run_cell"),
    ({"tau": 3.0, "params": {"kd.tau": 4.0}}, "kd.tau is given twice"),
])
def test_run_cell_mistakes_are_user_errors(home, keywords, expected):
    with pytest.raises(UserError, match=expected):
        run_cell(KD, smoke=True, **keywords)
    assert runs(home) == []  # no teacher trained, no run made
