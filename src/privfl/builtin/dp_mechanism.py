"""Built-in client-level differential privacy: DP-FedAvg with an accountant and a budget.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", ICLR): every sampled client clips its update to L2 norm ``C`` where it runs;
the server adds Gaussian noise of standard deviation ``z * C`` to the sum of clipped
updates and divides by the expected number of clients (a fixed denominator, so that
one client's influence on the average is bounded by ``C / expected``). The noise can
instead be added by each client: all of it (local DP), or a ``1 / n`` share of its
variance (distributed DP, meant for secure aggregation, which then reveals only the
noised sum).

With ``adaptive_quantile`` the clip norm follows a quantile of the clients' update
norms (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping",
NeurIPS): each client also reports whether its update was below the clip norm, that
count is noised and summed like the updates, and part of the noise budget pays for
it, so the accounted noise multiplier stays ``z``.

The accountant (a component registered through ``privfl_register_accountants``) is
chosen by name and composes one subsampled Gaussian per round, under the sampler's
own sampling scheme. Its state and the clip norm are part of the mechanism's state,
so checkpoints carry them and a resumed run reports the same epsilon.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from privfl.algorithms.dp import (
    ADAPTIVE_LEARNING_RATE,
    NOISE_TO_SIGNAL_LIMIT,
    centred_unclipped,
    clip_to_norm,
    default_count_stddev,
    gaussian_noise,
    noise_to_signal,
    realized_noise_multiplier,
    unclipped_fraction,
    update_clip_norm,
    update_noise_multiplier,
)
from privfl.components import Sampling
from privfl.errors import ConfigError, PrivacyWarning, UtilityWarning
from privfl.mechanisms import Accountant, MechanismSetup, PrivacyMechanism
from privfl.plugins import hookimpl

MODES = ("central", "local", "distributed")
NOISE_TAIL = 10.0
"""Standard deviations of client-added noise that :meth:`DPFedAvg.value_bound` allows
for: a Gaussian leaves them with probability below 2e-23 per coordinate."""
UNCLIPPED = "dp.unclipped"
"""The statistic each client reports under adaptive clipping: +1/2 if its update's
norm is at most C, else -1/2 (Andrew et al. 2021's centred bit)."""


class DPFedAvg(PrivacyMechanism):
    """Client-level DP-FedAvg: clipping where clients run, Gaussian noise, accounting.

    :param clip: The L2 clip norm ``C`` (the starting one with adaptive clipping).
    :param noise_multiplier: ``z``: the noise on the sum has standard deviation ``z * C``.
    :param mode: ``central`` (the server noises the sum), ``local`` (each client adds
        all the noise to its own update) or ``distributed`` (each client adds noise of
        variance ``(z * C)^2 / n`` for ``n`` expected clients, so the sum carries
        ``(z * C)^2``; use it with secure aggregation).
    :param adaptive_quantile: With a value in (0, 1), the clip norm tracks this
        quantile of the update norms (Andrew et al. 2021); unset: a fixed clip norm.
    :param adaptive_lr: Learning rate ``eta`` of the geometric clip-norm update.
    :param count_stddev: Noise standard deviation of the clipped-count sum; unset:
        expected clients / 20, the choice of Andrew et al.
    :param delta: The ``delta`` at which epsilon is reported.
    :param target_epsilon: Stop before the round that would take epsilon above this.
    :param accountant: Name of a registered accountant: ``auto`` (``pld`` where it
        applies and is affordable, else ``rdp``; the records say which and why, see
        :mod:`privfl.builtin.auto_accountant`), ``rdp`` (every sampler) or ``pld``
        (Poisson sampling or everyone; RDP's epsilon measured 8 to 87 percent above
        it, see :mod:`privfl.builtin.accountants`).
    :param secure_noise: Draw noise from a cryptographically secure generator (not
        reproducible); otherwise from the seeded generators, with a warning.
    """

    name = "dp"
    fixed_denominator = True
    flags = MappingProxyType(
        {
            "clip": "--dp-clip",
            "noise_multiplier": "--dp-noise",
            "mode": "--dp-mode",
            "adaptive_quantile": "--dp-adaptive-quantile",
            "delta": "--delta",
            "target_epsilon": "--target-epsilon",
            "accountant": "--accountant",
            "secure_noise": "--secure-noise",
        }
    )

    def __init__(
        self,
        clip: float = 1.0,
        noise_multiplier: float = 1.0,
        mode: str = "central",
        adaptive_quantile: float | None = None,
        adaptive_lr: float = ADAPTIVE_LEARNING_RATE,
        count_stddev: float | None = None,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        accountant: str = "auto",
        secure_noise: bool = False,
    ) -> None:
        _check(clip > 0 and math.isfinite(clip), "clip", clip, "a finite number > 0")
        _check(
            0 < noise_multiplier < math.inf,
            "noise_multiplier",
            noise_multiplier,
            "a finite number > 0",
        )
        _check(mode in MODES, "mode", mode, f"one of {', '.join(MODES)}")
        _check(
            adaptive_quantile is None or 0 < adaptive_quantile < 1,
            "adaptive_quantile",
            adaptive_quantile,
            "a number in (0, 1), or unset for a fixed clip norm",
        )
        _check(0 < adaptive_lr < math.inf, "adaptive_lr", adaptive_lr, "a finite number > 0")
        _check(
            count_stddev is None or 0 < count_stddev < math.inf,
            "count_stddev",
            count_stddev,
            "a finite number > 0",
        )
        _check(0 < delta < 1, "delta", delta, "a number in (0, 1)")
        _check(
            target_epsilon is None or 0 < target_epsilon < math.inf,
            "target_epsilon",
            target_epsilon,
            "a finite number > 0, or unset for no budget",
        )
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.mode = mode
        self.adaptive_quantile = adaptive_quantile
        self.adaptive_lr = float(adaptive_lr)
        self.count_stddev = count_stddev
        self.delta = float(delta)
        self.target_epsilon = target_epsilon
        self.accountant_name = accountant
        self.secure_noise = bool(secure_noise)
        if not self.secure_noise:
            warnings.warn(
                "DP noise comes from torch's seeded generator, which is not "
                "cryptographically secure: fine for experiments, not for a deployment "
                "(set secure_noise = true, `--secure-noise`)",
                PrivacyWarning,
                stacklevel=2,
            )
        # Set by setup() before the first round.
        self.accountant: Accountant | None = None
        self.sampling: Sampling | None = None
        self.expected_clients = 0.0
        self._update_noise = self.noise_multiplier
        self._count_noise = 0.0
        self._method_recorded: str | None = None

    def setup(self, context: MechanismSetup) -> None:
        """Build the accountant, take the sampler's scheme and split the noise budget."""
        if context.sampling is None:
            raise ConfigError(
                "sampler",
                "a sampler that cannot state its scheme",
                "a sampler that states how it samples (uniform, poisson or all): client-level "
                "DP is accounted for the sampling scheme actually used",
            )
        if self.mode == "distributed" and not context.secure_aggregation:
            raise ConfigError(
                "mode",
                self.mode,
                "central or local, or add secure aggregation (--secagg secagg+): each client "
                "adds only a share of the noise, which protects it only if the server sees "
                "nothing but the sum",
            )
        _warn_about_the_setting(self, context)
        self.accountant = context.create("accountant", self.accountant_name)
        self.sampling = context.sampling
        self.expected_clients = context.expected_clients
        if self.adaptive_quantile is not None:
            self._count_noise = self.count_stddev or default_count_stddev(self.expected_clients)
            self._update_noise = update_noise_multiplier(self.noise_multiplier, self._count_noise)
        first = self.epsilon_after(1)  # also refuses a scheme the accountant cannot account
        if self.target_epsilon is not None and first > self.target_epsilon:
            raise ConfigError(
                "target_epsilon",
                self.target_epsilon,
                f"at least {first:.4g}, the epsilon of one round at noise_multiplier "
                f"{self.noise_multiplier} (or raise [dp] noise_multiplier, --dp-noise)",
            )

    def client_config(self, *, round: int, client_ids: Sequence[int]) -> dict[str, Any]:
        """The clip norm and this client's share of the noise, for the client half."""
        share = {"central": 0.0, "local": 1.0, "distributed": 1 / self.expected_clients}[self.mode]
        adaptive = self.adaptive_quantile is not None
        return {
            "clip": self.clip,
            "noise_std": self._update_noise * self.clip * math.sqrt(share),
            "count_std": self._count_noise * math.sqrt(share) if adaptive else 0.0,
            "adaptive": adaptive,
        }

    def client_step(
        self,
        update: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generator: torch.Generator,
        statistics: dict[str, float],
    ) -> torch.Tensor:
        clip = float(config["clip"])
        try:
            clipped, norm = clip_to_norm(update, clip)
        except ValueError:  # NaN or infinite values: the screening rejects the update
            return update
        if config["adaptive"]:
            statistics[UNCLIPPED] = float(centred_unclipped(norm, clip))
        if config["noise_std"]:
            clipped = clipped + self._noise(clipped.numel(), config["noise_std"], generator)
            if config["adaptive"]:
                statistics[UNCLIPPED] += float(self._noise(1, config["count_std"], generator))
        return clipped

    def value_bound(self, bound: float | None) -> float | None:
        """The clip norm C, whatever comes in (an L2 norm bounds every coordinate), plus
        NOISE_TAIL standard deviations of the noise clients add; the adaptive statistic
        is 1/2 plus as much of its noise."""
        config = self.client_config(round=0, client_ids=())  # the same for every round
        update = config["clip"] + NOISE_TAIL * config["noise_std"]
        count = 0.5 + NOISE_TAIL * config["count_std"] if config["adaptive"] else 0.0
        return max(update, count)

    def server_step(
        self,
        aggregate: torch.Tensor,
        *,
        expected_clients: float,
        contributors: int,
        statistics: Mapping[str, float],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.accountant is None or self.sampling is None:
            raise RuntimeError("DPFedAvg.setup() was not called (the federation calls it)")
        if self.mode == "central":
            std = self._update_noise * self.clip / expected_clients
            aggregate = aggregate + self._noise(aggregate.numel(), std, generator)
        noise_multiplier = self.noise_multiplier
        if self.mode == "distributed":
            noise_multiplier = realized_noise_multiplier(
                self.noise_multiplier, expected_clients, contributors
            )
        self.accountant.compose(sampling=self.sampling, noise_multiplier=noise_multiplier)
        values: dict[str, Any] = {
            "epsilon": self.accountant.epsilon(self.delta),
            "delta": self.delta,
            "clip": self.clip,
        }
        if self.accountant.method != self._method_recorded:
            # In the first round's record (of a run or a resumed run) and where it changes.
            values["accountant"] = self._method_recorded = self.accountant.method
        if self.adaptive_quantile is not None:
            # The protocol divided the sum of centred bits by the expected clients.
            noisy_sum = statistics[UNCLIPPED] * expected_clients
            if self.mode == "central":
                noisy_sum += float(self._noise(1, self._count_noise, generator))
            fraction = unclipped_fraction(noisy_sum, expected_clients)
            self.clip = update_clip_norm(
                self.clip, fraction, self.adaptive_quantile, self.adaptive_lr
            )
        return aggregate, values

    def epsilon_now(self) -> float:
        """Epsilon at ``delta`` for the rounds accounted so far."""
        if self.accountant is None:
            raise RuntimeError("DPFedAvg.setup() was not called (the federation calls it)")
        return self.accountant.epsilon(self.delta)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at ``delta`` if ``rounds`` more rounds ran at the nominal noise."""
        assert self.accountant is not None
        assert self.sampling is not None
        return self.accountant.epsilon_after(
            sampling=self.sampling,
            noise_multiplier=self.noise_multiplier,
            rounds=rounds,
            delta=self.delta,
        )

    def state_dict(self) -> dict[str, Any]:
        assert self.accountant is not None
        return {"clip": self.clip, "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.accountant is not None
        self.clip = float(state["clip"])
        self.accountant.load_state_dict(state["accountant"])

    def _noise(self, numel: int, std: float, generator: torch.Generator) -> torch.Tensor:
        return gaussian_noise(
            numel, std, generator=None if self.secure_noise else generator, secure=self.secure_noise
        )


FEW_CLIENTS = 20
"""Below this many clients, client-level DP is warned about as the wrong guarantee."""


def _warn_about_the_setting(mechanism: DPFedAvg, context: MechanismSetup) -> None:
    """Warn, with numbers and the fix, about settings that defeat the purpose."""
    local = mechanism.mode == "local"
    ratio = noise_to_signal(
        mechanism.noise_multiplier, context.dimension, context.expected_clients, local=local
    )
    if ratio > NOISE_TO_SIGNAL_LIMIT:
        scale = (ratio / NOISE_TO_SIGNAL_LIMIT) ** (2 if local else 1)
        warnings.warn(
            f"DP noise will drown the averaged update: its norm is about {ratio:.1f}x the "
            f"clip norm (z sqrt(d) / {'sqrt(E)' if local else 'E'} with z = "
            f"{mechanism.noise_multiplier:g}, d = {context.dimension} parameters, E = "
            f"{context.expected_clients:g} expected clients per round), and training will "
            f"likely not learn; keep it under {NOISE_TO_SIGNAL_LIMIT:g} with about "
            f"{math.ceil(scale * context.expected_clients)} clients per round, a smaller "
            "model, or a smaller noise multiplier (less privacy)",
            UtilityWarning,
            stacklevel=2,
        )
    if context.num_clients < FEW_CLIENTS:
        warnings.warn(
            f"client-level DP over {context.num_clients} clients: it bounds what one "
            "client's whole data can change, so its epsilon says little when each client "
            "is a large data owner (cross-silo); record-level DP, DP-SGD inside each "
            "owner's training, is the guarantee that fits a few owners",
            PrivacyWarning,
            stacklevel=2,
        )


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


@hookimpl
def privfl_register_mechanisms() -> list[type]:
    return [DPFedAvg]


CLIP_SLACK = 1e-4
"""Relative rounding allowance of the server's clip-norm check: float32 clipping can
leave a norm a few units in the last place above ``C``."""


@hookimpl
def privfl_update_received(federation, result) -> str | None:
    """Under central DP the server sees each clipped update: refuse one whose norm exceeds
    the round's clip norm (a client that skipped clipping), since the noise is sized
    for updates of norm at most ``C``. Local and distributed modes send noised updates,
    whose norms the server cannot bound."""
    for mechanism in federation.mechanisms:
        if isinstance(mechanism, DPFedAvg) and mechanism.mode == "central":
            norm = float(torch.linalg.vector_norm(result.update, dtype=torch.float64))
            if norm > mechanism.clip * (1 + CLIP_SLACK):
                return (
                    f"update norm {norm:.4g} exceeds the clip norm {mechanism.clip:.4g} "
                    "that client-level DP's noise is sized for"
                )
    return None


@hookimpl
def privfl_should_stop(federation, record) -> str | None:
    """Stop before the round that would take epsilon above a DP mechanism's target."""
    for mechanism in federation.mechanisms:
        if isinstance(mechanism, DPFedAvg) and mechanism.target_epsilon is not None:
            following = mechanism.epsilon_after(1)
            if following > mechanism.target_epsilon:
                return (
                    f"privacy budget: one more round would take epsilon to {following:.4g}, "
                    f"above the target {mechanism.target_epsilon:g} (delta {mechanism.delta:g}); "
                    f"epsilon now {mechanism.epsilon_now():.4g}"
                )
    return None
