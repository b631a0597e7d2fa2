"""The run configuration: the core's keys, and one table of options per component.

The core owns only what every run has (data, model, partition, clients, rounds, local
training, seed, run folder) and the *names* of the components, including the list of
``mechanisms``. Each component declares its own options (:mod:`privfl.options`); a
TOML file sets them in a table named after the component::

    mechanisms = ["dp", "secagg+"]

    [dp]
    clip = 1.0

and the command line with the flags components declare (``--dp-clip 1.0``) or
``--option dp.clip=1.0``. :func:`check_components` refuses, before anything runs, an
unknown component name, a table of a component that is not chosen, and an unknown
option, each with a suggestion. The core keys are fields of :class:`RunConfig`; the
command line's flags and the docs' reference are generated from them and from the
components' declarations, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from privfl.components import DatasetSource
from privfl.compressor_stack import check_stack, compressor_names
from privfl.downlink import check_downlink_bits
from privfl.errors import ConfigError
from privfl.options import OptionSpec, check_options, declared_options
from privfl.registry import KINDS, ComponentRegistry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _key(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    minimum: float | None = None,
    group: str | None = None,
):
    """A config key: its default, help text, CLI flag (if not derived), lower bound and
    the group of ``privfl run --help`` it is listed under (one of ``FLAG_GROUPS``)."""
    metadata = {"help": help, "flag": flag, "minimum": minimum, "group": group}
    return field(default=default, metadata=metadata)


FLAG_GROUPS = {
    "data": "What the federation trains on and how it is split among clients.",
    "training": "The model, which clients train each round, and their local training.",
    "aggregation": "How the server combines updates, and simulated attacks on it.",
    "privacy": "Privacy mechanisms; client-level differential privacy.",
    "secure aggregation": "The server learns only the sum of the clients' updates.",
    "evaluation": "Which evaluators score the model, and how often.",
    "output": "Where clients run, what the run writes, and what the console shows.",
    "components": "Any option of a chosen component (flags that components declare are "
    "listed above, under their concern).",
}
"""The concerns that ``privfl run --help`` groups its flags by, in order, with a line
on each; a key without a group is listed under "other options"."""


@dataclass(frozen=True)
class RunConfig:
    """What the core of a ``privfl run`` owns, and the components' tables.

    The defaults are those of ``privfl run`` without flags. Components are chosen by
    name here; their own options live in ``tables`` (``[NAME]`` tables in TOML,
    declared flags and ``--option NAME.KEY=VALUE`` on the command line).
    """

    dataset: str = _key("mnist", "Registered dataset to train and test on.", group="data")
    task: str | None = _key(
        None,
        "The task: classification or regression; unset: inferred from the dataset's "
        "targets (floating point: regression). It chooses the loss and the metrics.",
        group="data",
    )
    model: str | None = _key(
        None,
        "Registered model, e.g. `2nn` or `cnn` (McMahan et al. 2017), `linear` or `mlp` "
        "(tables); unset: the dataset's (cnn for MNIST, mlp for owners' tables).",
        group="training",
    )
    partition: str = _key(
        "iid", "How examples are split among clients: iid, shards, dirichlet.", group="data"
    )
    clients: int | None = _key(
        None,
        "Number of clients the training data is split among; unset: 100, or one per data "
        "owner of a dataset split by owner (a folder of CSV files).",
        minimum=1,
        group="data",
    )
    sampler: str | None = _key(
        None,
        "Client sampler: uniform (fixed cohort), poisson, all; unset: the dataset's "
        "(uniform for MNIST, all for owners' tables).",
        group="training",
    )
    rounds: int = _key(60, "Number of rounds to run.", minimum=1, group="training")
    epochs: int = _key(1, "Local epochs per round on each client.", minimum=1, group="training")
    batch_size: int = _key(10, "Local minibatch size.", minimum=1, group="training")
    lr: float = _key(0.1, "Local SGD learning rate.", group="training")
    proximal_mu: float = _key(
        0.0,
        "FedProx proximal term weight mu on the clients (Li et al. 2020); 0: plain FedAvg.",
        group="training",
    )
    aggregator: str = _key(
        "fedavg",
        "Aggregator: fedavg, trimmed-mean, median, krum, multi-krum, or a plugin's.",
        group="aggregation",
    )
    server_optimizer: str = _key(
        "sgd",
        "Server optimizer: sgd, fedavgm, fedadam, fedyogi, fedadagrad (Reddi et al. 2021).",
        flag="--server-opt",
        group="aggregation",
    )
    mechanisms: tuple[str, ...] = _key(
        (),
        "Privacy mechanisms, applied in order: dp, secagg, secagg+, or a plugin's "
        "(repeat the flag for several; --dp and --secagg NAME add the built-ins).",
        flag="--mechanism",
        group="privacy",
    )
    compressor: str | tuple[str, ...] | None = _key(
        None,
        "Update compressor, encoding each client's update where it runs: qsgd, topk, "
        "random-mask, low-rank, shared-grid (the one secure aggregation can sum), or a plugin's; "
        "unset: updates travel as float32. Two names stack a sparsifier and a coder of the "
        'values it keeps: `random-mask,qsgd` (in a file: ["random-mask", "qsgd"]).',
        group="training",
    )
    downlink_bits: int | None = _key(
        None,
        "Send the clients the global model in this many bits per coordinate, 2 to 16 (a "
        "seeded random Hadamard rotation, then stochastic quantization: Caldas et al. "
        "2018); clients train from the model they decode, and the server applies the "
        "aggregate to its exact one. 0 or unset: the model travels as float32.",
        group="training",
    )
    attack: str | None = _key(
        None,
        "Simulated attack by malicious clients: label-flip, sign-flip, gaussian, alie.",
        group="aggregation",
    )
    malicious_fraction: float = _key(
        0.2,
        "Fraction of clients that are malicious, chosen with the seed (with --attack).",
        group="aggregation",
    )
    executor: str = _key(
        "vectorized",
        "Where clients run: vectorized (this process, a round's clients stacked into one "
        "batched computation where that pays), serial (this process, one at a time), "
        "process (worker processes).",
        group="output",
    )
    evaluators: tuple[str, ...] = _key(
        ("plaintext",),
        "Evaluators that score the model (repeat the flag for several).",
        flag="--eval",
        group="evaluation",
    )
    eval_every: int = _key(
        1, "Evaluate every this many rounds (and after the last).", minimum=1, group="evaluation"
    )
    checkpoint_every: int = _key(
        1,
        "Write a checkpoint every this many rounds (and after the last).",
        minimum=1,
        group="output",
    )
    seed: int = _key(
        0, "Root seed of every random choice; same seed, same bytes.", minimum=0, group="output"
    )
    run_dir: str | None = _key(
        None, "Folder for the run's outputs; unset: a new folder under ./runs.", group="output"
    )
    report: bool = _key(
        False,
        "When the run ends, write plots, summary.md and history.csv to RUN_DIR/report, as "
        "`privfl report RUN_DIR` does (needs matplotlib: the report extra).",
        group="output",
    )
    tables: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "Component options: a `[NAME]` table per component in TOML, "
            "`--option NAME.KEY=VALUE` on the command line.",
            "flag": "--option",
            "group": "components",
        },
    )

    def __post_init__(self) -> None:
        if self.compressor is not None:  # one name, or a stack's names as a tuple
            names = compressor_names(self.compressor)
            object.__setattr__(self, "compressor", names[0] if len(names) == 1 else names)
        for spec in fields(self):
            _check_value(spec, getattr(self, spec.name))
        check_downlink_bits(self.downlink_bits)

    def table(self, name: str) -> dict[str, Any]:
        """Return the options given for the component named ``name``."""
        return dict(self.tables.get(name, {}))

    def settings(self) -> dict[str, Any]:
        """The settings a checkpoint of this run must match: everything but what may
        change on resume (rounds, run folder, evaluators, evaluation and checkpoint
        intervals, the report, and the executor, which gives the same bytes wherever
        clients run), as JSON values."""
        changeable = {"rounds", "run_dir", "evaluators", "eval_every", "checkpoint_every"}
        changeable |= {"executor", "tables", "report"}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in changeable}
        ignored = {self.executor, *self.evaluators}
        values["tables"] = {k: v for k, v in self.tables.items() if k not in ignored}
        return json.loads(json.dumps(values))

    def to_toml(self) -> str:
        """Return the configuration as TOML: core keys, then one table per component."""
        values = {
            k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "tables"
        }
        values["evaluators"] = list(self.evaluators)
        values["mechanisms"] = list(self.mechanisms)
        for name, table in sorted(self.tables.items()):
            values[name] = {k: v for k, v in table.items() if v is not None}
        return tomli_w.dumps(values)


def config_fields() -> list[dataclasses.Field]:
    """Return the config keys in declaration order (for the CLI and the docs)."""
    return list(fields(RunConfig))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing file or bad syntax is a ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", str(path), "an existing TOML file") from None
    except OSError as exc:  # a folder, or no permission to read it
        raise ConfigError("config", str(path), f"a readable TOML file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "valid TOML (UTF-8 text)") from None


def make_config(*layers: Mapping[str, Any]) -> RunConfig:
    """Merge layers of settings (later wins; component tables merge per key).

    A layer maps core keys to values and component names to tables, as a TOML file
    does; its ``tables`` entry, if any, holds more tables (the command line's).
    """
    known = {spec.name for spec in fields(RunConfig)} - {"tables"}
    merged: dict[str, Any] = {"tables": {}}
    for layer in layers:
        for key, value in layer.items():
            if key == "tables":
                for name, table in value.items():
                    _merge_table(merged["tables"], name, table)
            elif key in known:
                merged[key] = value
            elif isinstance(value, Mapping):
                _merge_table(merged["tables"], key, value)
            else:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    key,
                    value,
                    f"{hint}a core key (see `privfl run --help`); a component's options go "
                    "in its own table, such as [dp] clip = 1.0",
                )
    for key in ("evaluators", "mechanisms"):
        if isinstance(merged.get(key), list):
            merged[key] = tuple(merged[key])
    return RunConfig(**merged)


def _merge_table(tables: dict[str, dict[str, Any]], name: str, table: Any) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(name, table, f"a table of {name}'s options")
    tables.setdefault(name, {}).update(table)


def _check_value(spec: dataclasses.Field, value: Any) -> None:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    if value is None and "None" in kind:
        return
    if kind.startswith("str | tuple") and isinstance(value, tuple):
        kind = "tuple"  # a list of names where one name may stand alone
    if kind.startswith("bool") and not isinstance(value, bool):
        raise ConfigError(spec.name, value, "true or false")
    if kind.startswith("int") and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(spec.name, value, "an integer")
    if kind.startswith("float") and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        raise ConfigError(spec.name, value, "a number")
    if kind.startswith("str") and not isinstance(value, str):
        raise ConfigError(spec.name, value, "a string")
    if kind.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(spec.name, value, "a table of tables")
    if kind.startswith("tuple") and not (
        isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    ):
        raise ConfigError(spec.name, value, "a list of names")
    minimum = spec.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(spec.name, value, f"an integer >= {minimum}")


CHOSEN_KINDS = ("dataset", "model", "partition", "sampler", "aggregator", "server_optimizer")


DATASET_DEFAULTS = ("model", "sampler")
"""Keys that, left unset, take the dataset's choice (``DatasetSource.defaults``)."""


def with_dataset_defaults(config: RunConfig, registry: ComponentRegistry) -> RunConfig:
    """``config`` with ``model`` and ``sampler``, where it leaves them unset, taken from
    its dataset's :attr:`~privfl.DatasetSource.defaults` (an MLP and every owner each
    round for tables, the CNN and a uniform cohort for MNIST)."""
    dataset = registry.get("dataset", config.dataset)
    defaults = dataset.defaults if issubclass(dataset, DatasetSource) else DatasetSource.defaults
    unset: dict[str, Any] = {k: defaults[k] for k in DATASET_DEFAULTS if getattr(config, k) is None}
    return dataclasses.replace(config, **unset) if unset else config


def chosen_components(config: RunConfig, registry: ComponentRegistry) -> list[tuple[str, str]]:
    """Return (kind, name) of every component ``config`` uses; unknown names are refused.

    An option named after a component kind chooses a component of that kind: DP's
    ``accountant`` option chooses the accountant whose ``[NAME]`` table applies.
    """
    config = with_dataset_defaults(config, registry)
    chosen = [(kind, getattr(config, kind)) for kind in (*CHOSEN_KINDS, "executor")]
    chosen += [("evaluator", name) for name in config.evaluators]
    chosen += [("mechanism", name) for name in config.mechanisms]
    if config.attack is not None:
        chosen.append(("attack", config.attack))
    if config.compressor is not None:
        chosen += [("compressor", name) for name in compressor_names(config.compressor)]
    for kind, name in list(chosen):
        for spec in declared_options(registry.get(kind, name)):
            value = config.table(name).get(spec.name, spec.default)
            if spec.name in KINDS and isinstance(value, str):
                registry.get(spec.name, value)
                chosen.append((spec.name, value))
    return chosen


def check_components(config: RunConfig, registry: ComponentRegistry) -> None:
    """Refuse unknown component names, tables of components not used, unknown options.

    Every error names the table or option as the user spelt it, with a suggestion.
    """
    used = {name: kind for kind, name in chosen_components(config, registry)}
    if config.compressor is not None:
        names = compressor_names(config.compressor)
        known = [registry.get("compressor", name) for name in registry.names("compressor")]
        check_stack(names, [registry.get("compressor", name) for name in names], known)
    for name, table in config.tables.items():
        if name in used:
            check_options(registry.get(used[name], name), name, table)
            continue
        registered = {n: kind for kind in KINDS for n in registry.names(kind)}
        if name in registered:
            kind = registered[name]
            how = (
                f"add it to mechanisms = [...] (--mechanism {name})"
                if kind == "mechanism"
                else f"set {kind} = {name!r}"
            )
            raise ConfigError(
                f"table [{name}]",
                table,
                f"options of a component this run uses, and {kind} {name!r} is not one: "
                f"{how}, or drop the table",
            )
        close = difflib.get_close_matches(name, sorted(used), n=1)
        hint = f"did you mean [{close[0]}]? " if close else ""
        raise ConfigError(
            f"table [{name}]",
            table,
            f"{hint}a table named after a component this run uses: {', '.join(sorted(used))}",
        )


def component_flags(registry: ComponentRegistry) -> dict[str, list[tuple[str, str, OptionSpec]]]:
    """Return flag -> [(kind, component, option)] for every flag a component declares."""
    flags: dict[str, list[tuple[str, str, OptionSpec]]] = {}
    for kind in KINDS:
        for name in registry.names(kind):
            for spec in declared_options(registry.get(kind, name)):
                if spec.flag:
                    flags.setdefault(spec.flag, []).append((kind, name, spec))
    return flags


def apply_component_flags(
    config: RunConfig, values: Mapping[str, Any], registry: ComponentRegistry
) -> RunConfig:
    """Set each flag's value in the table of every chosen component that declares it.

    :raises ConfigError: for a flag that no chosen component declares, naming the
        components that do.
    """
    chosen = chosen_components(config, registry)
    declared = component_flags(registry)
    tables = {name: dict(table) for name, table in config.tables.items()}
    for flag, value in values.items():
        targets = [(n, spec.name) for k, n, spec in declared.get(flag, []) if (k, n) in chosen]
        if not targets:
            owners = ", ".join(f"{k} {n}" for k, n, _ in declared.get(flag, []))
            raise ConfigError(
                flag, value, f"a flag of {owners}, which this run does not use: choose one first"
            )
        for name, option in targets:
            tables.setdefault(name, {})[option] = value
    return dataclasses.replace(config, tables=tables)
