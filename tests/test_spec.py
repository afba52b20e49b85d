"""benchmarks.yaml validation and cell ids."""

import copy

import pytest
import yaml

from harness.errors import UserError
from harness.spec.spec import DEFAULT_SPEC, load_spec
from methods import validate_defaults


@pytest.fixture(scope="module")
def spec():
    return load_spec()


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(DEFAULT_SPEC.read_text())


def test_repository_spec_is_valid(spec):
    validate_defaults(spec)
    assert {"digits", "mnist", "cifar10", "cifar100"} <= set(spec.datasets)
    assert {"baseline", "kd"} <= set(spec.methods)
    for method in spec.methods.values():  # every default names where it comes from
        assert all(d.source for d in method.defaults.values())


def test_cell_parsing(spec):
    cell = spec.cell("mnist/hinton1200-hinton800/kd")
    pair = spec.pairs[cell.pair]
    assert (cell.dataset, pair.teacher, pair.student, cell.method) == ("mnist", "hinton1200", "hinton800", "kd")
    assert cell.id == "mnist/hinton1200-hinton800/kd"


@pytest.mark.parametrize("cell_id, expected", [
    ("mnist/hinton1200-hinton800", "malformed"),
    ("mnist//kd", "malformed"),
    ("mnist/hinton1200-hinton800/kd/x", "malformed"),
    ("mnsit/hinton1200-hinton800/kd", "did you mean mnist"),
    ("mnist/hinton1200-hinton80/kd", "did you mean hinton1200-hinton800"),
    ("mnist/hinton1200-hinton800/kdd", "did you mean kd"),
    ("cifar100/hinton1200-hinton800/kd", "not defined for dataset 'cifar100'"),
    ("mnist/hinton1200-hinton800/kd+", "malformed"),
    ("mnist/hinton1200-hinton800/kd+kd", "names a method twice"),
])
def test_bad_cell_ids(spec, cell_id, expected):
    with pytest.raises(UserError, match=expected):
        spec.cell(cell_id)


def test_listing(spec):
    everything = spec.cells()
    assert len(everything) == sum(len(p.datasets) for p in spec.pairs.values()) * len(spec.methods)
    assert len({c.id for c in everything}) == len(everything)
    assert [c.id for c in spec.cells(suite="nmt_table1")] == spec.suites["nmt_table1"].cells
    assert all(c.dataset == "digits" for c in spec.cells(dataset="digits"))
    assert all(c.method == "kd" for c in spec.cells(method="kd"))
    with pytest.raises(UserError, match="unknown suite"):
        spec.cells(suite="nope")


def _mutations():
    """(description, mutate(raw), expected words in the one-line error)."""
    def setter(path, value):
        def mutate(raw):
            node = raw
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return mutate

    def deleter(path):
        def mutate(raw):
            node = raw
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return mutate

    return [
        ("missing section", deleter(["recipes"]), "recipes"),
        ("lr wrong type", setter(["recipes", "digits", "lr"], "fast"), "recipes.digits.lr"),
        ("lr negative", setter(["recipes", "digits", "lr"], -1), "recipes.digits.lr"),
        ("unknown optimizer", setter(["recipes", "digits", "optimizer"], "lbfgs"), "recipes.digits.optimizer"),
        ("unknown recipe key", setter(["recipes", "digits", "lr_decay"], 3), "lr_decay"),
        ("milestones not fractions", setter(["recipes", "cifar_nst", "schedule", "milestones"], [200, 300]),
         "milestones"),
        ("dataset unknown recipe", setter(["datasets", "digits", "recipe"], "nope"), "datasets.digits.recipe"),
        ("mean per channel", setter(["datasets", "cifar10", "mean"], [0.5]), "mean and std"),
        ("pair unknown model", setter(["pairs", "resnet20-resnet8", "student"], "resnet9"), "resnet20-resnet8"),
        ("pair unknown dataset", setter(["pairs", "resnet20-resnet8", "datasets"], ["svhn"]), "svhn"),
        ("unpaired stages", setter(["pairs", "resnet20-resnet8", "stages"], {"teacher": [1, 2], "student": [1]}),
         "same length"),
        ("suite bad cell", setter(["suites", "digits", "cells"], ["digits/resnet20-resnet8/kdd"]), "kdd"),
        ("reference outside suite", setter(["suites", "nmt_table1", "references"],
                                           [{"cell": "mnist/hinton1200-hinton800/lpl", "value": 1,
                                             "metric": "top1", "source": "x"}]), "not one of the suite's cells"),
        ("reference bad metric", setter(["suites", "nmt_table1", "references", 0, "metric"], "acc"), "metric"),
        ("method without class", deleter(["methods", "kd", "class"]), "class"),
        ("convention bad selection", setter(["suites", "nmt_table1", "convention"], {"selection": "best"}),
         "suites.nmt_table1.convention.selection: Input should be 'last', 'best-test', 'best-val' or 'unknown'"),
        ("convention bad aggregate", setter(["suites", "nmt_table1", "references", 0, "convention"],
                                            {"aggregate": "mean"}), "references.0.convention.aggregate"),
        ("median without k", setter(["suites", "nmt_table1", "references", 0, "convention"],
                                    {"aggregate": "median-of-k"}), "aggregate median-of-k needs k, the number of runs"),
        ("k without of-k", setter(["suites", "nmt_table1", "convention"], {"aggregate": "single", "k": 3}),
         "k goes with mean-of-k or median-of-k, not aggregate single"),
        ("pair override unknown pair", setter(["suites", "digits", "pair_overrides"], {"resnet9-resnet8": {"kd": {"tau": 2}}}),
         "suites.digits.pair_overrides: unknown pair 'resnet9-resnet8'"),
        ("pair override unknown method", setter(["suites", "digits", "pair_overrides"], {"resnet20-resnet8": {"kdd": {}}}),
         "method 'kdd'"),
        ("margin not positive", setter(["suites", "nmt_table1", "equivalence_margin"], 0),
         "suites.nmt_table1.equivalence_margin"),
        ("bad name", setter(["datasets", "Digits!"], {}), "Digits!"),
    ]


@pytest.mark.parametrize("description, mutate, expected", _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_spec_names_the_key(tmp_path, raw, description, mutate, expected):
    broken = copy.deepcopy(raw)
    mutate(broken)
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(UserError) as err:
        load_spec(path)
    message = str(err.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("value, expected", [("hot", "tau"), (-1.0, "tau"), (None, "tau")])
def test_method_default_of_wrong_type(tmp_path, raw, value, expected):
    broken = copy.deepcopy(raw)
    broken["methods"]["kd"]["defaults"]["tau"]["value"] = value
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(UserError, match=expected):
        validate_defaults(load_spec(path))


def test_invalid_yaml_and_unsafe_tags(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("datasets: [\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_spec(path)
    path.write_text("datasets: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="not valid YAML"):  # safe loader: no code
        load_spec(path)


def test_the_smoke_suite_covers_every_method():
    from harness.spec.cells import method_parts
    from harness.spec.spec import load_spec

    spec = load_spec()
    covered = {part for cell in spec.cells(suite="smoke") for part in method_parts(cell.method)}
    assert covered == set(spec.methods)


def test_conventions_are_optional_and_a_reference_may_declare_its_own(tmp_path, raw):
    from harness.results.conventions import convention_of

    spec = load_spec()
    assert spec.suites["positive_control"].convention.selection == "unknown"  # not declared: unknown
    edited = copy.deepcopy(raw)
    suite = edited["suites"]["nmt_table1"]
    suite["convention"] = {"selection": "last", "aggregate": "single"}
    suite["references"][0]["convention"] = {"selection": "best-test", "aggregate": "median-of-k", "k": 5}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(edited))
    nmt = load_spec(path).suites["nmt_table1"]
    first = nmt.references[0]
    mine = convention_of(nmt, first.cell, first.metric.removesuffix("_error"))
    assert (mine.selection, mine.aggregate, mine.k) == ("best-test", "median-of-k", 5)
    other = convention_of(nmt, nmt.references[2].cell, "top1")  # declares none: the suite's
    assert (other.selection, other.aggregate, other.k) == ("last", "single", None)
