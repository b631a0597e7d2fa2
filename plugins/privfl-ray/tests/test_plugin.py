"""The plugin's registration, its options, and a Ray instance the executor starts itself."""

from __future__ import annotations

import privfl_ray
import pytest
import ray
from privfl_ray import RayExecutor

import privfl
from privfl.cli.main import main
from privfl.options import check_options, declared_options
from privfl.testing import tiny_federation


def test_the_entry_point_registers_the_ray_executor(capsys):
    pm = privfl.get_plugin_manager()
    assert pm.components.get("executor", "ray") is RayExecutor
    assert pm.distributions["ray"].startswith("privfl-ray ")
    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "ray (privfl-ray " in listing
    assert (
        "executor ray: address=None, actors=0, threads=1 (--threads), "
        "vectorize=False (--vectorize), timeout=600.0"
    ) in listing


def test_options_are_declared_with_help_and_checked():
    specs = {spec.name: spec for spec in declared_options(RayExecutor)}
    assert list(specs) == ["address", "actors", "threads", "vectorize", "timeout"]
    assert all(spec.help for spec in specs.values())
    assert specs["address"].type == "str | None"
    check_options(RayExecutor, "ray", {"address": "auto", "actors": 4})
    with pytest.raises(privfl.ConfigError, match="did you mean 'address'"):
        check_options(RayExecutor, "ray", {"adress": "auto"})


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"address": ""}, "address"),
        ({"actors": -1}, "actors"),
        ({"threads": 0}, "threads"),
        ({"vectorize": "yes"}, "vectorize"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_bad_values_are_refused_naming_the_option(options, key):
    with pytest.raises(privfl.ConfigError) as error:
        RayExecutor(**options)
    assert error.value.key == key


@pytest.mark.usefixtures("no_ray_instance")
def test_a_cluster_it_cannot_reach_is_a_plain_error_with_the_fix(monkeypatch):
    def refuse(address):
        cause = RuntimeError("Failed to connect to GCS.\nAuthenticationError: token is missing")
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from cause

    monkeypatch.setattr(ray, "init", refuse)
    executor = RayExecutor(address="127.0.0.1:9")
    with pytest.raises(privfl.PrivflError) as error:
        executor.start(tiny_federation().client_app)
    message = str(error.value)
    assert message.startswith("ray.address = '127.0.0.1:9': Failed to connect")
    assert "(AuthenticationError: token is missing)" in message
    assert "RAY_AUTH_MODE=token" in message


@pytest.mark.usefixtures("no_ray_instance")
def test_without_an_instance_the_executor_starts_one_and_shuts_it_down():
    fed = tiny_federation(executor="ray", plugins=[privfl_ray], options={"ray": {"actors": 1}})
    with fed:
        (record,) = fed.run(1)
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 1.0  # started with actors x threads CPUs
    assert not ray.is_initialized()
    assert record.num_examples == 200
