"""federation_from_config: a Flower app's federation from privfl's run configuration."""

from __future__ import annotations

import pytest
import torch
from privfl_flower import NodeData, federation_from_config

from privfl.app.checkpoint import save_model
from privfl.app.config import load_toml, make_config
from privfl.builtin.executors import SerialExecutor
from privfl.cli.smpc_party import load_run_model
from privfl.client_data import write_client_folders
from privfl.data.partition import iid
from privfl.testing import tiny_dataset

CONFIG = {
    "model": "2nn",
    "sampler": "all",
    "mechanisms": ["dp", "secagg+"],
    "dp": {"mode": "distributed", "noise_multiplier": 0.01, "clip": 4.0},
}


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_on_the_server_it_uses_the_executor_and_writes_the_config_of_the_run(tmp_path):
    executor = SerialExecutor(threads=1)
    run_config = {"num-rounds": 3, "run-dir": str(tmp_path / "run")}
    fed = federation_from_config(
        CONFIG, client_data=NodeData(2), executor=executor, run_config=run_config
    )
    assert fed.executor is executor
    assert fed.num_clients == 2
    assert [m.name for m in fed.mechanisms] == ["dp", "secagg+"]
    written = make_config(load_toml(tmp_path / "run" / "config.toml"))
    assert written == make_config(CONFIG, {"rounds": 3, "run_dir": str(tmp_path / "run")})
    # privfl's commands read the folder as one of their runs (as the run writes it)
    save_model(tmp_path / "run" / "model.safetensors", fed.global_model())
    model = load_run_model(tmp_path / "run")
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), fed.params)


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_on_a_node_it_trains_on_the_node_data_and_writes_nothing(tmp_path):
    train, _ = tiny_dataset(num_features=784)
    folder = write_client_folders(tmp_path / "owner", train, iid(len(train), 2, seed=0))
    run_config = {"num-rounds": 3, "run-dir": str(tmp_path / "run")}
    fed = federation_from_config(
        CONFIG, client_data=folder, executor="serial", run_config=run_config
    )
    assert type(fed.executor).__name__ == "SerialExecutor"
    assert not (tmp_path / "run").exists()
    assert fed.client_app.data is folder
    (record,) = fed.run(1)
    assert record.values["secagg_contributors"] == 2
    assert torch.isfinite(fed.params).all()
