"""The run configuration: one flat set of keys shared by TOML files and CLI flags.

Every key is a field of :class:`RunConfig` with its help text; the command line's
flags and the configuration reference in the docs are generated from these fields, so
the three cannot drift apart. Per-component options that have no key of their own go
in ``[options.<component-name>]`` tables (or ``--option NAME.KEY=VALUE``).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from privfl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _key(default: Any, help: str, *, flag: str | None = None, minimum: float | None = None):
    """A config key: its default, help text, CLI flag (if not derived) and lower bound."""
    return field(default=default, metadata={"help": help, "flag": flag, "minimum": minimum})


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``privfl run`` needs, with the defaults of ``privfl run`` without flags."""

    dataset: str = _key("mnist", "Registered dataset to train and test on.")
    data_dir: str | None = _key(
        None, "Folder holding the dataset's files; unset: the small sample shipped with privfl."
    )
    model: str = _key("cnn", "Registered model, e.g. `2nn` or `cnn` (McMahan et al. 2017).")
    partition: str = _key("iid", "How examples are split among clients: iid, shards, dirichlet.")
    alpha: float = _key(
        0.5, "Dirichlet concentration (partition dirichlet); smaller is more skewed."
    )
    clients: int = _key(100, "Number of clients the training data is split among.", minimum=1)
    sampler: str = _key("uniform", "Client sampler: uniform (fixed cohort), poisson, all.")
    clients_per_round: int = _key(10, "Clients per round (sampler uniform).", minimum=1)
    sample_rate: float = _key(0.1, "Probability that a client joins a round (sampler poisson).")
    rounds: int = _key(60, "Number of rounds to run.", minimum=1)
    epochs: int = _key(1, "Local epochs per round on each client.", minimum=1)
    batch_size: int = _key(10, "Local minibatch size.", minimum=1)
    lr: float = _key(0.1, "Local SGD learning rate.")
    proximal_mu: float = _key(
        0.0, "FedProx proximal term weight mu on the clients (Li et al. 2020); 0: plain FedAvg."
    )
    aggregator: str = _key(
        "fedavg", "Aggregator: fedavg, trimmed-mean, median, krum, multi-krum, or a plugin's."
    )
    trim_fraction: float = _key(
        0.1, "Fraction trimmed at each end per coordinate (aggregator trimmed-mean)."
    )
    byzantine: int = _key(
        1, "Number of Byzantine clients tolerated (aggregators krum, multi-krum).", minimum=0
    )
    server_optimizer: str = _key(
        "sgd",
        "Server optimizer: sgd, fedavgm, fedadam, fedyogi, fedadagrad (Reddi et al. 2021).",
        flag="--server-opt",
    )
    server_lr: float | None = _key(
        None, "Server learning rate; unset: the server optimizer's default (sgd: 1.0)."
    )
    attack: str | None = _key(
        None, "Simulated attack by malicious clients: label-flip, sign-flip, gaussian, alie."
    )
    malicious_fraction: float = _key(
        0.2, "Fraction of clients that are malicious, chosen with the seed (with --attack)."
    )
    dp: bool = _key(
        False, "Client-level differential privacy: DP-FedAvg (McMahan et al. 2018), accounted."
    )
    dp_clip: float = _key(
        1.0, "L2 clip norm C of each client's update (with --dp; the start with adaptive)."
    )
    dp_noise: float = _key(
        1.0, "DP noise multiplier z: the noise on the sum of clipped updates has std z * C."
    )
    dp_mode: str = _key(
        "central",
        "Who adds DP noise: central (the server), local (each client, all of it), "
        "distributed (each client a 1/n share; use with --secagg).",
    )
    dp_adaptive_quantile: float | None = _key(
        None, "Clip norm tracks this quantile of update norms (Andrew et al. 2021); unset: fixed."
    )
    accountant: str = _key("rdp", "Privacy accountant (dp-accounting): rdp, or pld (tighter).")
    delta: float = _key(1e-5, "The delta at which epsilon is reported (with --dp).")
    target_epsilon: float | None = _key(
        None, "Stop before the round that would take epsilon above this (with --dp)."
    )
    secure_noise: bool = _key(
        False, "Draw DP noise from a cryptographically secure generator (not reproducible)."
    )
    secagg: str | None = _key(
        None, "Secure aggregation: secagg (Bonawitz et al. 2017) or secagg+ (Bell et al. 2020)."
    )
    dropout: float = _key(
        0.0, "Fraction of clients dropping out during secure aggregation (seeded simulation)."
    )
    executor: str = _key("serial", "Executor that runs the clients' local training.")
    threads: int = _key(0, "torch threads for local training; 0 chooses by the work.", minimum=0)
    evaluators: tuple[str, ...] = _key(
        ("plaintext",),
        "Evaluators that score the model (repeat the flag for several).",
        flag="--eval",
    )
    eval_every: int = _key(1, "Evaluate every this many rounds (and after the last).", minimum=1)
    checkpoint_every: int = _key(
        1, "Write a checkpoint every this many rounds (and after the last).", minimum=1
    )
    seed: int = _key(0, "Root seed of every random choice; same seed, same bytes.", minimum=0)
    run_dir: str | None = _key(
        None, "Folder for the run's outputs; unset: a new folder under ./runs."
    )
    options: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "Per-component options: `[options.NAME]` tables in TOML, "
            "`--option NAME.KEY=VALUE` on the command line.",
            "flag": "--option",
        },
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            _check_value(spec, getattr(self, spec.name))

    def component_options(self, cls: type, name: str) -> dict[str, Any]:
        """Return the keyword options for component ``cls`` registered as ``name``.

        Keys that are unset (``None``) are left out, so the class's default applies.
        """
        options = {option: getattr(self, key) for key, option in config_key_options(cls).items()}
        options = {key: value for key, value in options.items() if value is not None}
        options.update(self.options.get(name, {}))
        return options

    def to_toml(self) -> str:
        """Return the configuration as TOML (unset keys are left out)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        values["evaluators"] = list(self.evaluators)
        return tomli_w.dumps(values)


def config_key_options(cls: type) -> dict[str, str]:
    """Return config key -> constructor option for component class ``cls``.

    ``config_keys`` lists keys whose option has the same name, or maps keys to option
    names (``{"dp_clip": "clip"}``) where a key needs a prefix on the command line.
    """
    keys = getattr(cls, "config_keys", ())
    return dict(keys) if isinstance(keys, Mapping) else {key: key for key in keys}


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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"valid TOML ({exc})") from None


def make_config(*layers: Mapping[str, Any]) -> RunConfig:
    """Merge layers of settings (later wins; ``options`` tables merge per component)."""
    known = {spec.name for spec in fields(RunConfig)}
    merged: dict[str, Any] = {"options": {}}
    for layer in layers:
        for key, value in layer.items():
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(key, value, f"a known key{hint}; see `privfl run --help`")
            if key == "options":
                if not isinstance(value, Mapping):
                    raise ConfigError("options", value, "a table of tables")
                for name, table in value.items():
                    merged["options"].setdefault(name, {}).update(table)
            else:
                merged[key] = value
    if isinstance(merged.get("evaluators"), list):
        merged["evaluators"] = tuple(merged["evaluators"])
    return RunConfig(**merged)


def _check_value(spec: dataclasses.Field, value: Any) -> None:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    if value is None and "None" in kind:
        return
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
