"""`harness list` as a map (issue #32 item 9): the suites with titles and sizes; per cell its finished
seeds and whether its dataset is on disk."""

from mlflow.tracking import MlflowClient

from harness.cli import main

KD = "digits/resnet20-resnet8/kd"


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_suites_are_listed_with_titles_cells_and_claims(home, capsys):
    assert main(["list", "--suites"]) == 0
    out = lines(capsys)
    digits = next(line for line in out if line.startswith("digits "))
    assert "  7 cells,  1 claims  Embedded digits: quick comparison" in digits
    control = next(line for line in out if line.startswith("positive_control "))
    assert "2 cells,  1 claims  Positive control" in control


def test_status_shows_finished_seeds_and_whether_the_data_is_there(home, tmp_path, cifar_root, capsys):
    home.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.create_experiment("kd-harness")
    for seed, status, smoke in ((0, "FINISHED", "False"), (2, "FINISHED", "False"), (1, "FAILED", "False"),
                                (3, "FINISHED", "True")):
        run = client.create_run(experiment, tags={"role": "student", "cell": KD, "seed": str(seed), "smoke": smoke})
        client.set_terminated(run.info.run_id, status)
    assert main(["list", "--dataset", "digits", "--method", "kd", "--status"]) == 0
    kd = next(line for line in lines(capsys) if line.startswith(KD + " "))
    assert "seeds finished: 0, 2 " in kd and kd.endswith("data: embedded")  # the failed and the smoke run: not
    empty = tmp_path / "empty"
    assert main(["list", "--dataset", "cifar100", "--method", "kd", "--status", "--data-root", str(empty)]) == 0
    cifar = lines(capsys)
    assert cifar and all(line.endswith(f"data: missing (no {empty}/cifar-100-python/train)") for line in cifar)
    assert main(["list", "--dataset", "cifar100", "--method", "kd", "--status", "--data-root", str(cifar_root)]) == 0
    assert all(line.endswith("seeds finished: none          data: present") for line in lines(capsys))
    assert main(["list", "--dataset", "cifar100", "--method", "kd"]) == 0
    assert all(" " not in line for line in lines(capsys))  # without --status: one cell id a line, as before


def test_a_suite_cell_that_cannot_run_is_named_not_dropped_in_silence(home, tmp_path, capsys):
    import yaml

    from harness.spec.spec import DEFAULT_SPEC

    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["suites"]["digits"]["cells"].append("digits/hinton1200-hinton800/at")  # AT needs maps; an MLP has vectors
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--spec", str(path), "list", "--suite", "digits"]) == 0
    out, err = capsys.readouterr()
    assert "digits/hinton1200-hinton800/at" not in out and len(out.split()) == 7
    assert "1 of suite digits's 8 cells cannot run" in err and "digits/hinton1200-hinton800/at" in err
    assert main(["--spec", str(path), "list", "--suite", "digits", "--all"]) == 0
    out, err = capsys.readouterr()
    assert "digits/hinton1200-hinton800/at  # cannot run: at needs spatial feature maps" in out and not err
