"""MLflow tracking: one run per cell and seed (and one per teacher), found again by its
`run_key` tag so that finished cells are skipped and interrupted ones resumed."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path


from harness.errors import UserError

EXPERIMENT = "kd-harness"


# the MLflow UI opens an experiment of this kind on its runs table (not the GenAI traces view)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store (`HOME/artifacts`), never in the current directory; a
    tracking server keeps its own default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def default_tracking_uri(home: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def finished_run_keys(uri: str) -> set[str]:
    """The run keys whose newest run in the store is FINISHED (teachers, students, retrainings)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return set()
    newest = {}
    for run in client.search_runs([found.experiment_id], max_results=50000, order_by=["attributes.start_time DESC"]):
        newest.setdefault(run.data.tags.get("run_key"), run.info.status)
    return {key for key, status in newest.items() if key and status == "FINISHED"}


def share_view(uri: str, name: str, state: dict) -> str | None:
    """The kd-harness experiment's id in the store, if it has one, with `state` recorded as the MLflow
    UI's shared view `name` (the experiment tag the UI reads for `?viewStateShareKey=NAME`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return None
    client.set_experiment_tag(found.experiment_id, f"mlflow.sharedViewState.{name}", json.dumps(state))
    return found.experiment_id


@contextmanager
def tracking_uri_scope(uri: str):
    """MLflow's process-wide tracking URI set to `uri` for a block, then put back as it was (it also
    sets MLFLOW_TRACKING_URI, which later commands in the same process would otherwise inherit)."""
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if previous_env is not None else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


class Tracker:
    def __init__(self, uri: str, experiment: str = EXPERIMENT):
        import mlflow
        from mlflow.tracking import MlflowClient

        for noisy in ("alembic", "mlflow"):  # after the import, which sets mlflow's own level
            logging.getLogger(noisy).setLevel(logging.WARNING)

        self.uri = uri
        if uri.startswith(("http://", "https://")):
            _check_reachable(uri)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=artifact_location(uri))
            if found is None or found.tags.get(EXPERIMENT_KIND[0]) is None:
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException as e:
            raise UserError(f"tracking URI {uri!r} is not usable: {str(e).splitlines()[0]}") from None
        except Exception as e:  # unreachable server, bad scheme, unwritable path
            raise UserError(f"tracking URI {uri!r} is not reachable: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None

    def find(self, run_key: str) -> list:
        """Runs with this key, newest first."""
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.run_key = '{run_key}'",
                                       order_by=["attributes.start_time DESC"])

    def students_of(self, teacher_key: str) -> list:
        """FINISHED student runs that distilled from the teacher with this key (alone or among others)."""
        return self.client.search_runs([self.experiment_id], filter_string=(
            "tags.role = 'student' and attributes.status = 'FINISHED' and "
            f"params.`teacher.key` LIKE '%{teacher_key}%'"))

    def create(self, run_name: str, tags: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def epoch_logger(self, run_id: str):
        """A per-epoch logger that logs each epoch once, even when a resume replays epochs
        (after falling back to an older checkpoint) or finds epochs the store never received."""
        logged = {m.step for m in self.client.get_metric_history(run_id, "epoch_seconds")}

        def log(metrics: dict, step: int) -> None:
            if step not in logged:
                self.log_metrics(run_id, metrics, step)
                logged.add(step)

        return log

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        self.client.log_text(run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)

    def set_tags(self, run_id: str, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v)[:5000])

    def check_registry(self) -> None:
        """Before any training: `--register` needs a store with a model registry."""
        import mlflow

        try:
            self.client.search_registered_models(max_results=1)
        except mlflow.exceptions.MlflowException as e:
            raise UserError(f"--register: the store {self.uri} has no usable model registry "
                            f"({str(e).splitlines()[0]})") from None

    def log_model(self, run_id: str, model, example, register: str | None = None) -> None:
        """The trained network as an MLflow model of the run (`runs:/RUN_ID/model`), with its
        signature and an input example; optionally registered under `register`. Through the client
        only: MLflow's fluent API would set the process-wide tracking URI (and MLFLOW_TRACKING_URI)."""
        import tempfile

        import mlflow
        import torch

        # its pickle warning says what the docstring says: the module loads back through the harness's classes
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        from mlflow.models import infer_signature

        # a CPU copy in eval mode: a model trained on a GPU loads on a CPU-only host
        cpu_model = copy.deepcopy(model).cpu().eval()
        example = example.detach().cpu().float()
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            signature = infer_signature(example.numpy(), cpu_model(example).numpy())
            # pickle: loads back as the eager module (its class from the harness package), which .eval()s;
            # requirements given, not inferred (inference imports the model in a subprocess: seconds)
            mlflow.pytorch.save_model(cpu_model, f"{tmp}/model", input_example=example.numpy(), signature=signature,
                                      serialization_format="pickle",
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm"])
            self.client.log_artifacts(run_id, f"{tmp}/model", "model")
        if register:
            try:
                if not self.client.search_registered_models(f"name = '{register}'"):
                    self.client.create_registered_model(register)
                self.client.create_model_version(register, f"runs:/{run_id}/model", run_id=run_id)
            except mlflow.exceptions.MlflowException as e:
                raise UserError(f"cannot register the model as {register!r} in {self.uri}: "
                                f"{str(e).splitlines()[0]}") from None

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_image(self, run_id: str, png: bytes, name: str) -> None:
        from PIL import Image

        self.client.log_image(run_id, Image.open(io.BytesIO(png)), name)

    def finish(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str, tags: dict) -> None:
        """A run resumed (by this or another worker): RUNNING again, with the new claim's tags."""
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, tags)

    def tag(self, run_id: str, name: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(name)

    def withdraw(self, run_id: str) -> None:
        """A claim that lost a race: deleted, so that no report or resume ever sees it."""
        self.client.delete_run(run_id)


def _check_reachable(uri: str) -> None:
    """MLflow's HTTP client retries for minutes; answer an unreachable server at once."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"tracking server {uri} is not reachable: {getattr(e, 'reason', e)}") from None
