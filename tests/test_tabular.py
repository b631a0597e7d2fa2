"""Tabular data owners: CSV validation, federated scaling, the csv and diabetes datasets,
tabular models, and the command line on owners' files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import privfl
from privfl.algorithms.tabular_models import MLP, LinearModel
from privfl.builtin.datasets import CSVSource, DiabetesSource
from privfl.cli.main import main
from privfl.data import diabetes
from privfl.data.tabular import combine_moments, moments, read_csv, standardization
from privfl.errors import ConfigError, DataError
from privfl.tabular_owners import TabularOwnerData, csv_owners, federated_scaling

HEADER = "x1,x2,y\n"


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,2,3\n4,,6\n", r"line 3, column 'x2': missing value ''"),
        ("1,2,3\n4,NA,6\n", r"line 3, column 'x2': missing value 'NA'"),
        ("1,red,3\n", r"line 2, column 'x2': 'red' is not a number; categorical"),
        ("1,2,3\n4,5\n", r"line 3: 2 fields, but the header has 3"),
        ("1,inf,3\n", r"line 2, column 'x2': 'inf' is not a finite number"),
        ("1,2,nan\n", r"line 2, column 'y': missing value"),
        ("", r"no data rows"),
    ],
)
def test_bad_cells_are_refused_naming_file_line_and_column(tmp_path, body, message):
    path = write(tmp_path / "alice.csv", HEADER + body)
    with pytest.raises(
        DataError, match=rf"alice\.csv, {message}" if "line" in message else message
    ):
        read_csv(path, "y")


def test_columns_are_checked_against_the_header(tmp_path):
    path = write(tmp_path / "a.csv", HEADER + "1,2,3\n")
    with pytest.raises(
        DataError, match=r"a\.csv: no column 'price' \(the target\); the header has x1, x2, y"
    ):
        read_csv(path, "price")
    with pytest.raises(DataError, match="also a feature"):
        read_csv(path, "y", ["x1", "y"])
    with pytest.raises(DataError, match="empty file"):
        read_csv(write(tmp_path / "e.csv", ""), "y")
    with pytest.raises(DataError, match="no such file"):
        read_csv(tmp_path / "missing.csv", "y")
    table = read_csv(path, "y", ["x2"])
    assert table.columns == ("x2",)
    assert table.features.tolist() == [[2.0]]
    assert table.targets.tolist() == [3.0]


def test_summed_moments_give_the_pooled_mean_and_std():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 2, (30, 3)), rng.normal(-1, 4, (50, 3))
    mean, std = standardization(combine_moments([moments(a), moments(b)]))
    pooled = np.concatenate([a, b])
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-10)
    _, constant = standardization(moments(np.ones((4, 2))))
    assert constant.tolist() == [1.0, 1.0]  # a constant column scales to zeros, not NaN


def test_owners_scale_with_the_union_of_their_training_rows(tmp_path):
    diabetes.write_owner_csvs(tmp_path, ("alice", "bob"), seed=3)
    owners = csv_owners(tmp_path, diabetes.TARGET, test_fraction=0.25, seed=1)
    assert [o.name.rsplit("/", 1)[-1] for o in owners] == ["alice.csv", "bob.csv"]
    assert sum(len(o.table) for o in owners) == 442
    for owner in owners:
        assert len(owner.test_rows) == round(0.25 * len(owner.table))
        assert not set(owner.test_rows) & set(owner.train_rows)
    scaling = federated_scaling(owners)
    data = TabularOwnerData(owners, scaling)
    train = torch.cat([data.load(k).examples.inputs for k in range(2)]).double()
    targets = torch.cat([data.load(k).examples.targets for k in range(2)]).double()
    torch.testing.assert_close(
        train.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        train.std(0, unbiased=False), torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert abs(float(targets.mean())) < 1e-6
    assert len(data.test()) == sum(len(o.test_rows) for o in owners)


def test_owners_with_other_columns_are_refused(tmp_path):
    write(tmp_path / "a.csv", HEADER + "1,2,3\n4,5,6\n")
    write(tmp_path / "b.csv", "x1,x3,y\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="feature columns differ"):
        federated_scaling(csv_owners(tmp_path, "y", test_fraction=0.5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without CSV files"):
        csv_owners(tmp_path / "empty", "y")


def test_diabetes_is_bundled_with_its_license_and_split_between_owners():
    table = diabetes.load_diabetes()
    assert table.features.shape == (442, 10)
    assert table.columns[:3] == ("age", "sex", "bmi")
    assert (table.targets.min(), table.targets.max()) == (25.0, 346.0)
    readme = (diabetes.Path(diabetes.__file__).parent / "README.md").read_text()
    assert "BSD 3-Clause" in readme
    assert "Efron" in readme
    data = DiabetesSource(owners=3).load()
    assert data.client_data is not None
    assert data.client_data.num_clients == 3
    assert data.train is None
    assert data.test.targets.dtype == torch.float32
    sizes = [len(data.client_data.load(k)) for k in range(3)]
    assert sum(sizes) + len(data.test) == 442


def test_tabular_models_are_registered_with_their_widths():
    registry = privfl.get_plugin_manager().components
    mlp = registry.create("model", "mlp", {"in_features": 10, "widths": [32, 16]})
    shapes = [tuple(p.shape) for p in mlp.parameters()]
    assert shapes == [(32, 10), (32,), (16, 32), (16,), (1, 16), (1,)]
    assert [tuple(p.shape) for p in LinearModel(4, 3).parameters()] == [(3, 4), (3,)]
    assert len(list(MLP(4, []).parameters())) == 2  # no hidden layer: linear
    with pytest.raises(ConfigError, match="widths = '64'"):
        MLP(4, "64")
    with pytest.raises(ConfigError, match="in_features = 0"):
        MLP()


def test_federated_test_mse_is_within_ten_percent_of_central_training():
    data = DiabetesSource().load()
    owners = data.client_data
    parts = [owners.load(k).examples for k in range(2)]
    pooled = privfl.TensorPair(
        torch.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts])
    )
    torch.manual_seed(0)
    model = LinearModel(10)
    common = {
        "model": model,
        "test": data.test,
        "training": privfl.LocalTraining(batch_size=10, lr=0.01),
        "sampler": "all",
        "executor": "serial",
    }
    central = privfl.Federation(train=pooled, partition=[torch.arange(len(pooled))], **common)
    federated = privfl.Federation(client_data=owners, **common)
    central_mse = central.run(20)[-1].metrics["mse"]
    federated_records = federated.run(20)
    federated_mse = federated_records[-1].metrics["mse"]
    assert federated_mse <= 1.1 * central_mse  # measured 0.4138 against 0.4101
    assert federated_records[-1].metrics["r2"] > 0.45


def test_cli_trains_on_owners_csv_files_and_reports_regression_metrics(tmp_path, capsys):
    owners = tmp_path / "owners"
    diabetes.write_owner_csvs(owners)
    run_dir = tmp_path / "run"
    args = ["--dataset", "csv", "--data-dir", str(owners), "--target", "progression"]
    status = main(
        [
            "run",
            *args,
            "--task",
            "regression",
            "--rounds",
            "3",
            "--lr",
            "0.01",
            "--run-dir",
            str(run_dir),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    for metric in ("final mse", "final mae", "final r2"):
        assert metric in out
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in history] == [[0, 1]] * 3  # both owners, every round
    assert history[-1]["r2"] > 0.3
    assert main(["evaluate", str(run_dir)]) == 0
    scores = json.loads((run_dir / "evaluation-plaintext.json").read_text())
    assert scores["mse"] == pytest.approx(history[-1]["mse"], rel=1e-6)


def test_a_toml_config_and_a_single_csv_file_split_among_simulated_clients(tmp_path, capsys):
    path = diabetes.write_owner_csvs(tmp_path, ("all",))[0]
    config = tmp_path / "run.toml"
    config.write_text(
        'dataset = "csv"\nmodel = "linear"\nclients = 4\nsampler = "all"\nrounds = 2\n'
        f'lr = 0.01\nrun_dir = "{tmp_path / "run"}"\n\n[csv]\ndata_dir = "{path}"\n'
        'target = "progression"\nfeatures = ["age", "bmi", "bp"]\n'
    )
    assert main(["run", str(config)]) == 0, capsys.readouterr().out
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["clients"] == [0, 1, 2, 3]
    assert "final mse" in capsys.readouterr().out


def test_owner_datasets_refuse_another_client_count_and_bad_data(tmp_path, capsys):
    diabetes.write_owner_csvs(tmp_path / "owners")
    base = ["run", "--dataset", "csv", "--data-dir", str(tmp_path / "owners"), "--rounds", "1"]
    assert main([*base, "--target", "progression", "--clients", "3"]) == 2
    assert "clients = 3 is not allowed: 2 (dataset csv has 2 data owners" in capsys.readouterr().out
    assert main([*base, "--target", "price"]) == 2
    assert "no column 'price'" in capsys.readouterr().out
    assert main([*base, "--target", "progression", "--attack", "label-flip"]) == 2
    assert "label-flip changes class labels" in capsys.readouterr().out


def test_csv_source_reads_class_labels_for_classification(tmp_path):
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40))
    write(tmp_path / "a.csv", HEADER + rows)
    data = CSVSource(tmp_path / "a.csv", "y", labels=True).load()
    assert data.train is not None
    assert data.train.targets.dtype == torch.int64
    assert set(data.train.targets.tolist()) == {0, 1}
