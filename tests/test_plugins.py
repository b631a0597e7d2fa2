"""The plugin manager: built-ins, blocking, autoload, tracing, typos and duplicate names."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl import hookimpl
from privfl.plugins import BUILTIN_PLUGINS, get_plugin_manager
from privfl.testing import make_plugin_manager, tiny_federation


def test_builtins_are_registered_by_module_name():
    pm = get_plugin_manager(autoload=False)
    names = [name for name, _ in pm.list_name_plugin()]
    assert names == list(BUILTIN_PLUGINS)


def test_builtin_components_are_registered_by_name():
    registry = get_plugin_manager(autoload=False).components
    assert registry.names("sampler") == ["all", "poisson", "uniform"]
    assert registry.names("aggregator") == [
        "fedavg",
        "krum",
        "median",
        "multi-krum",
        "trimmed-mean",
    ]
    assert registry.names("server_optimizer") == [
        "fedadagrad",
        "fedadam",
        "fedavgm",
        "fedyogi",
        "sgd",
    ]
    assert registry.names("attack") == ["alie", "gaussian", "label-flip", "sign-flip"]
    assert registry.names("model") == ["2nn", "cnn", "linear", "mlp"]
    assert registry.names("dataset") == ["csv", "diabetes", "mnist"]
    assert registry.names("compressor") == [
        "low-rank",
        "qsgd",
        "random-mask",
        "shared-grid",
        "topk",
    ]
    assert registry.names("partition") == ["dirichlet", "iid", "shards"]
    assert registry.entries("executor")["serial"].plugin == "privfl.builtin.executors"


def test_block_plugins_env_blocks_builtins(monkeypatch):
    monkeypatch.setenv("PRIVFL_BLOCK_PLUGINS", "privfl.builtin.console, privfl.builtin.aggregators")
    pm = get_plugin_manager(autoload=False)
    assert not pm.has_plugin("privfl.builtin.console")
    assert pm.components.names("aggregator") == []
    with pytest.raises(privfl.ConfigError, match=r"aggregator = 'fedavg'.*nothing registered"):
        tiny_federation(plugins=[], aggregator="fedavg")


def test_disable_autoload_env_skips_entry_points(monkeypatch):
    class FakeEntryPoint:
        name = "fake"
        value = "fake_plugin"
        dist = None

        def load(self):
            raise AssertionError("autoload should be off")

    monkeypatch.setattr("privfl.plugins.entry_points", lambda group: [FakeEntryPoint()])
    monkeypatch.setenv("PRIVFL_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert not pm.has_plugin("fake")
    monkeypatch.delenv("PRIVFL_DISABLE_PLUGIN_AUTOLOAD")
    with pytest.raises(AssertionError, match="autoload should be off"):
        get_plugin_manager()


def test_entry_point_plugins_register_like_builtins(monkeypatch):
    class Module:
        @hookimpl
        def privfl_register_aggregators(self):
            class Mean(privfl.Aggregator):
                name = "mean"

                def aggregate(self, updates, weights):
                    return updates.mean(0)

            return [Mean]

    class FakeEntryPoint:
        name = "fake"
        value = "fake_plugin"
        dist = None

        def load(self):
            return Module()

    monkeypatch.setattr("privfl.plugins.entry_points", lambda group: [FakeEntryPoint()])
    pm = get_plugin_manager()
    assert pm.components.entries("aggregator")["mean"].plugin == "fake"
    monkeypatch.setenv("PRIVFL_BLOCK_PLUGINS", "fake")
    assert "mean" not in get_plugin_manager().components.names("aggregator")


def test_trace_env_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("PRIVFL_TRACE_HOOKS", "1")
    fed = tiny_federation()
    fed.run(1)
    err = capsys.readouterr().err
    assert "privfl_round_protocol" in err
    assert "privfl_session_finish" in err


def test_misspelt_hook_is_a_startup_error():
    class Typo:
        @hookimpl
        def privfl_round_finsh(self, record):
            pass

    with pytest.raises(privfl.PluginError, match=r"privfl_round_finsh.*misspelt"):
        make_plugin_manager([Typo()])


def test_wrong_hook_arguments_are_a_startup_error():
    class Wrong:
        @hookimpl
        def privfl_round_finish(self, recrod):
            pass

    with pytest.raises(privfl.PluginError, match="recrod"):
        make_plugin_manager([Wrong()])


def test_duplicate_component_names_name_both_plugins():
    class Other(privfl.Aggregator):
        name = "fedavg"

        def aggregate(self, updates, weights):
            return updates[0]

    class Clash:
        @hookimpl
        def privfl_register_aggregators(self):
            return [Other]

    pm = make_plugin_manager([Clash()])
    with pytest.raises(privfl.PluginError) as info:
        pm.components  # noqa: B018
    message = str(info.value)
    assert "'privfl.builtin.aggregators'" in message
    assert "<locals>.Clash'" in message


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ("fedavg", "not a Aggregator"),
        (torch.nn.Linear, "not a Aggregator"),
        (type("Nameless", (privfl.Aggregator,), {"aggregate": lambda s, u, w: u}), "`name`"),
    ],
)
def test_registering_a_non_component_is_an_error(returned, problem):
    class Bad:
        @hookimpl
        def privfl_register_aggregators(self):
            return [returned]

    with pytest.raises(privfl.PluginError, match=problem):
        make_plugin_manager([Bad()]).components  # noqa: B018


def test_unknown_component_name_suggests_the_close_one():
    with pytest.raises(privfl.ConfigError, match=r"did you mean 'fedavg'\?"):
        tiny_federation(aggregator="fedvag")


def test_unknown_component_option_lists_accepted_ones():
    with pytest.raises(
        privfl.ConfigError, match=r"uniform\.per_round = 2 .*did you mean 'clients_per_round'"
    ):
        tiny_federation(sampler="uniform", options={"uniform": {"per_round": 2}})


def test_registry_cache_is_reset_when_a_plugin_registers():
    pm = make_plugin_manager()
    assert "mean" not in pm.components.names("aggregator")

    class Mean(privfl.Aggregator):
        name = "mean"

        def aggregate(self, updates, weights):
            return updates.mean(0)

    class Late:
        @hookimpl
        def privfl_register_aggregators(self):
            return [Mean]

    pm.register(Late())
    assert "mean" in pm.components.names("aggregator")
