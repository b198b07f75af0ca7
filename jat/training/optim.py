"""Optimiser, learning-rate schedule and parameter EMA (optax).

One-cycle schedule (Smith 2018) as jat defines it: the rate rises linearly from ``lr_min`` to
``lr_max`` over the first 45 % of the steps, falls linearly back to ``lr_min`` at 90 %, then
anneals linearly to exactly ``lr_final`` at the last step. It is optax's
``linear_onecycle_schedule`` with its factors derived from these three rates (optax's own
parametrisation ends at lr_min / final_div_factor, which the original code mistook for
``lr_final``). ``per_epoch`` restarts the cycle every epoch, as the original code did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

PCT_RISE = 0.45
PCT_FALL_END = 0.90


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the step (host side; the rate is fed to the step)."""

    kind: str  # "onecycle" | "constant"
    lr_min: float
    lr_max: float
    lr_final: float
    total_steps: int
    steps_per_epoch: int
    per_epoch: bool = False

    def __call__(self, step: int) -> float:
        return float(self.values(step, 1)[0])

    def values(self, start: int, count: int) -> np.ndarray:
        """Rates of steps ``start … start + count − 1`` (float32), computed in one call."""
        if self.kind == "constant":
            return np.full(count, self.lr_max, np.float32)
        length = self.steps_per_epoch if self.per_epoch else self.total_steps
        t = np.arange(start, start + count)
        t = t % length if self.per_epoch else np.minimum(t, length - 1)
        fn = onecycle(length, self.lr_min, self.lr_max, self.lr_final)
        return np.asarray(jax.vmap(fn)(jnp.asarray(t)), np.float32)


def onecycle(total_steps: int, lr_min: float, lr_max: float, lr_final: float) -> Callable:
    """optax one-cycle schedule over ``total_steps`` with the rates at its three corners;
    step 0 gives lr_min, step ⌊0.45 T⌋ lr_max and step T − 1 lr_final."""
    if not 0 < lr_min <= lr_max:
        raise ValueError(f"one-cycle needs 0 < lr_min <= lr_max, got {lr_min}, {lr_max}")
    if not 0 < lr_final <= lr_max:
        raise ValueError(f"one-cycle needs 0 < lr_final <= lr_max, got {lr_final}, {lr_max}")
    # optax places the corners at int(pct * transition_steps); with T - 1 transition steps the
    # last step is the end of the anneal.
    steps = max(total_steps - 1, 1)
    return optax.linear_onecycle_schedule(
        transition_steps=steps,
        peak_value=lr_max,
        pct_start=PCT_RISE,
        pct_final=PCT_FALL_END,
        div_factor=lr_max / lr_min,
        final_div_factor=lr_min / lr_final,
    )


def optimizer(name: str, weight_decay: float, clip_norm: float | None):
    """Adam or AdamW (decoupled decay) behind optional global-norm clipping; the learning rate is
    an injected hyperparameter set every step."""
    if name == "adam":
        inner = optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    elif name == "adamw":
        inner = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, inner)


def set_learning_rate(opt_state, lr):
    """The optimiser state with the injected learning rate replaced (jittable)."""
    *head, inner = opt_state
    hyper = dict(inner.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return (*head, inner._replace(hyperparams=hyper))


def ema_rate(decay: float, step):
    """EMA step size 1 − min(decay, (1 + t)/(10 + t)): early averages forget the random init."""
    t = jnp.asarray(step, jnp.float32)
    return 1.0 - jnp.minimum(decay, (1.0 + t) / (10.0 + t))
