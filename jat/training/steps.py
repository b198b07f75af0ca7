"""Pure, jittable training and evaluation steps over a padded batch (:class:`dataset.Batch`).

A batch of B structures is one disjoint :class:`jat.graph.Graph`, evaluated by the predictor
every other path uses (:func:`jat.predictor.predict`). Energies are compared after subtracting
the fixed composition shift Σ μ_Z (done on the host in float64), so the network only ever sees
O(1) targets. Every sum is weighted by the batch's ``weight`` (0 for the copies that fill a short
batch) and by whether a label exists.

A shallow ensemble (a model with K readout heads) is trained on the log-cosh loss of its heads'
mean plus a proper scoring rule of the heads' spread (``LossSpec.ensemble``): the Gaussian
negative log-likelihood of the residual of the mean given the heads' σ, or the Gaussian CRPS,
per energy per atom and per force component, so that the σ the potential reports is fitted to
the errors and not an accident of the initialisation.

Property targets (``LossSpec.properties``) add one log-cosh term each, of the residual of the
property formed by :func:`jat.properties.property_values` (per structure; per atom for atomic
targets; |μ| for a dipole) against its label less its reference, weighted by whether the
structure has that label; their errors are summed as ``prop_<key>_abs`` … and reported as
``<key>_mae`` and ``<key>_rmse``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import optax

from jat.predictor import over_members, predict_any
from jat.properties import Target, compared, property_values
from jat.training.optim import ema_rate, set_learning_rate
from jat.uncertainty import spread as member_spread


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """params, optimiser state, EMA of the params and the number of steps taken."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class PropertyTerm:
    """A property target's loss term: the target, its weight and its log-cosh scale α (in the
    target's unit: per structure, per atom for an atomic target, e·Å for a dipole)."""

    target: Target
    weight: float = 1.0
    alpha: float = 0.01

    @property
    def key(self) -> str:
        return self.target.key


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Log-cosh loss weights and scales: forces (eV/Å) and energy per atom (eV/atom)."""

    forces_weight: float = 1.0
    energy_weight: float = 0.0
    forces_alpha: float = 0.1
    energy_alpha: float = 0.01
    #: a shallow ensemble's spread term: None, "nll" or "crps" (see :func:`ensemble_score`)
    ensemble: str | None = None
    ensemble_weight: float = 1.0
    #: property targets' terms (:class:`PropertyTerm`)
    properties: tuple[PropertyTerm, ...] = ()


ENSEMBLE_LOSSES = ("nll", "crps")
#: σ floor (eV per atom, eV/Å) of the ensemble scores: keeps the NLL finite where heads agree
SIGMA_FLOOR = 1e-4


def ensemble_score(kind: str, error: jax.Array, std: jax.Array) -> jax.Array:
    """The per-value score of a residual ``error`` (mean − label) given the heads' σ ``std``
    (same shape): "nll" the Gaussian negative log-likelihood log σ + e²/(2σ²) + ½ log 2π
    (nats), "crps" the Gaussian continuous ranked probability score
    σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π], z = e/σ (in the unit of the value). σ is
    sqrt(σ² + :data:`SIGMA_FLOOR`²)."""
    s = jnp.sqrt(std**2 + SIGMA_FLOOR**2)
    z = error / s
    if kind == "nll":
        return jnp.log(s) + 0.5 * z**2 + 0.5 * jnp.log(2 * jnp.pi)
    if kind == "crps":
        cdf, pdf = jstats.norm.cdf(z), jstats.norm.pdf(z)
        return s * (z * (2 * cdf - 1) + 2 * pdf - 1 / jnp.sqrt(jnp.pi))
    raise ValueError(f"unknown ensemble loss {kind!r}; choose from {', '.join(ENSEMBLE_LOSSES)}")


def log_cosh(x: jax.Array, alpha: float) -> jax.Array:
    """α log cosh(x/α): quadratic x²/(2α) for |x| ≪ α, linear |x| − α log 2 beyond (optax)."""
    return alpha * optax.losses.log_cosh(x / alpha)


def member_predictions(model, params, scale, batch, forces: bool, committee: bool = False):
    """Network energies (B,) in eV (composition shift excluded) and forces (B·n, 3) eV/Å, with
    a leading member axis K for a ``committee`` (params with a leading member axis) or a model
    with K readout heads (a shallow ensemble)."""
    p = predict_any(model, params, scale, batch.graph, committee=committee, forces=forces)
    return p.energy, p.forces


def predict(model, params, scale, batch, forces: bool, committee: bool = False):
    """Network energies (B,) in eV (composition shift excluded) and forces (B·n, 3) eV/Å; for
    a ``committee`` (params with a leading member axis) or a shallow ensemble the members'
    means."""
    energy, f = member_predictions(model, params, scale, batch, forces, committee)
    if energy.ndim == 1:
        return energy, f
    return jnp.mean(energy, axis=0), None if f is None else jnp.mean(f, axis=0)


@dataclasses.dataclass(frozen=True)
class Spread:
    """A shallow ensemble's heads' σ: energy per atom (B,) and force components (B·n, 3)."""

    energy_atom: jax.Array
    forces: jax.Array | None


def property_errors(spec: LossSpec, extras, batch, members: bool) -> dict[str, jax.Array]:
    """Per property target, the residual of its compared value (:func:`jat.properties.compared`)
    against the batch's label, (B,) or (B·n,) for an atomic target, from the network's further
    outputs ``extras``; ``members``: the extras have a leading member axis, and the residual is
    that of the members' mean value."""
    if not spec.properties:
        return {}
    targets = tuple(term.target for term in spec.properties)
    values = property_values(targets, extras, batch.graph, members=members)
    out = {}
    for t in targets:
        v = jnp.mean(values[t.key], axis=0) if members else values[t.key]
        out[t.key] = compared(t, v) - batch.properties[t.key]
    return out


def property_weights(spec: LossSpec, batch) -> dict[str, jax.Array]:
    """Per property target, the weight of each compared value: (B,) for a structure's label
    (1 for real structures that have it), (B·n,) for an atomic target's real atoms."""
    g = batch.graph
    out = {}
    for term in spec.properties:
        w = batch.property_weight[term.key]
        out[term.key] = g.node_mask * w[g.node_graph] if term.target.kind == "atomic" else w
    return out


def residuals(spec: LossSpec, model, params, scale, batch, forces: bool, committee=False):
    """Everything the loss and the error sums of ``spec`` need, from one prediction: the
    residuals (energy per atom (B,), energy per structure (B,), forces (B·n, 3) or None) of
    the prediction, of the members' mean for a committee or a shallow ensemble; the property
    residuals (:func:`property_errors`); and, for a shallow ensemble's loss, its heads'
    :class:`Spread` (else None)."""
    p = predict_any(model, params, scale, batch.graph, committee=committee, forces=forces)
    energies, f = p.energy, p.forces
    members = energies.ndim == 2
    spread = None
    if members:  # the members' mean and σ (jat.uncertainty.spread)
        energies, std_e = member_spread(energies, jnp)
        std_f = None
        if f is not None:
            f, std_f = member_spread(f, jnp)
        if spec.ensemble is not None:
            spread = Spread(std_e / batch.n_atoms, std_f)
    de = energies - batch.energy
    df = None if f is None else f - batch.forces
    dp = property_errors(spec, p.extras, batch, members)
    return (de / batch.n_atoms, de, df), dp, spread


def force_weights(batch) -> jax.Array:
    """(B·n,) weight of each atom's force: 1 for real atoms of labelled, real structures."""
    g = batch.graph
    return g.node_mask * batch.forces_weight[g.node_graph]


def loss_sums(
    spec: LossSpec, de_atom, df, batch, spread: Spread | None = None, dp=None
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per trained term, the summed log-cosh and the number of values it sums (energies per
    atom of real structures, force components of real atoms, property values by their key
    from the residuals ``dp``); with a shallow ensemble's ``spread`` also the summed ensemble
    score of each ("energy_nll", "forces_nll", or _crps)."""
    sums = {}
    if dp:
        weights = property_weights(spec, batch)
        for term in spec.properties:
            if term.weight > 0:
                w = weights[term.key]
                loss = log_cosh(dp[term.key], term.alpha)
                sums[term.key] = (jnp.sum(w * loss), w.sum())
    if spec.energy_weight > 0:
        w = batch.energy_weight
        sums["energy"] = (jnp.sum(w * log_cosh(de_atom, spec.energy_alpha)), w.sum())
        if spread is not None:
            score = ensemble_score(spec.ensemble, de_atom, spread.energy_atom)
            sums[f"energy_{spec.ensemble}"] = (jnp.sum(w * score), w.sum())
    if spec.forces_weight > 0 and df is not None:
        atom = force_weights(batch)
        per_atom = log_cosh(df, spec.forces_alpha).sum(axis=-1)
        sums["forces"] = (jnp.sum(atom * per_atom), 3.0 * atom.sum())
        if spread is not None and spread.forces is not None:
            score = ensemble_score(spec.ensemble, df, spread.forces).sum(axis=-1)
            sums[f"forces_{spec.ensemble}"] = (jnp.sum(atom * score), 3.0 * atom.sum())
    return sums


def loss_terms(spec: LossSpec, de_atom, df, batch, spread: Spread | None = None, dp=None):
    """Weighted mean log-cosh of the energy per atom, of force components (real ones only) and
    of the property residuals ``dp``, and the ensemble scores' means with a ``spread``."""
    sums = loss_sums(spec, de_atom, df, batch, spread, dp)
    return {k: s / jnp.maximum(n, 1.0) for k, (s, n) in sums.items()}


def total_loss(spec: LossSpec, terms) -> jax.Array:
    """ρ_E · energy + ρ_F · forces, plus (a shallow ensemble) ensemble_weight times the same
    combination of the ensemble scores."""
    out = spec.energy_weight * terms.get("energy", 0.0) + spec.forces_weight * terms.get(
        "forces", 0.0
    )
    if spec.ensemble is not None:
        kind = spec.ensemble
        out = out + spec.ensemble_weight * (
            spec.energy_weight * terms.get(f"energy_{kind}", 0.0)
            + spec.forces_weight * terms.get(f"forces_{kind}", 0.0)
        )
    for term in spec.properties:
        out = out + term.weight * terms.get(term.key, 0.0)
    return out


def error_sums(de_atom, de, df, batch, dp=None, spec: LossSpec | None = None):
    """Sums of absolute and squared errors and their counts, over real structures and atoms;
    with property residuals ``dp`` (of ``spec``'s targets) also ``n_prop_<key>``,
    ``prop_<key>_abs`` and ``prop_<key>_sq``."""
    w = batch.energy_weight
    out = {
        "n_energy": w.sum(),
        "energy_abs": jnp.sum(w * jnp.abs(de)),
        "energy_sq": jnp.sum(w * de**2),
        "energy_atom_abs": jnp.sum(w * jnp.abs(de_atom)),
        "energy_atom_sq": jnp.sum(w * de_atom**2),
    }
    if df is not None:
        atom = force_weights(batch)
        out["n_forces"] = 3.0 * atom.sum()
        out["forces_abs"] = jnp.sum(atom[..., None] * jnp.abs(df))
        out["forces_sq"] = jnp.sum(atom[..., None] * df**2)
    if dp:
        for key, w in property_weights(spec, batch).items():
            out[f"n_prop_{key}"] = w.sum()
            out[f"prop_{key}_abs"] = jnp.sum(w * jnp.abs(dp[key]))
            out[f"prop_{key}_sq"] = jnp.sum(w * dp[key] ** 2)
    return out


def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a scalar bool array)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step(model, tx, spec: LossSpec, ema_decay, state: TrainState, scale, batch, lr):
    """One optimiser step; returns the new state and the batch's loss terms (device arrays).

    The step is applied only if the loss, the gradient and the update are finite; otherwise the
    state is returned unchanged and ``metrics["finite"]`` is False, for the host to check when
    it gathers the epoch's metrics (no transfer per step).
    """
    need_forces = spec.forces_weight > 0

    def loss_fn(params):
        (de_atom, _, df), dp, spread = residuals(spec, model, params, scale, batch, need_forces)
        terms = loss_terms(spec, de_atom, df, batch, spread, dp)
        return total_loss(spec, terms), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(tx, ema_decay, state, lr, loss, terms, grads, batch.weight.sum())


def apply_gradients(tx, ema_decay, state: TrainState, lr, loss, terms, grads, weight):
    """The optimiser and EMA update of ``state`` from the batch's loss, loss terms and gradient,
    kept only if all are finite; ``weight`` is the number of real structures in the batch."""
    opt_state = set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(updates)
    params = optax.apply_updates(state.params, updates)
    if ema_decay is None:
        ema = params
    else:
        ema = optax.incremental_update(params, state.ema, ema_rate(ema_decay, state.step))
    new = TrainState(params, opt_state, ema, state.step + 1)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {"loss": loss * weight, "weight": weight, "finite": finite}
    metrics.update({f"loss_{k}": v * weight for k, v in terms.items()})
    return new, metrics


def reweighted(batch, weights: jax.Array):
    """``batch`` with every structure's weights multiplied by ``weights`` (B,) >= 0, e.g. the
    counts of a bootstrap resample."""
    return dataclasses.replace(
        batch,
        energy_weight=batch.energy_weight * weights,
        forces_weight=batch.forces_weight * weights,
        weight=batch.weight * weights,
        property_weight={k: w * weights for k, w in batch.property_weight.items()},
    )


def committee_train_step(
    model, tx, spec: LossSpec, ema_decay, state: TrainState, scale, batch, lr, weights
):
    """:func:`train_step` of K members at once (``state`` with a leading member axis on every
    leaf, one step of each member on the same batch, in one compiled call, by
    :func:`jat.predictor.over_members`); ``weights`` (K, B) the members' structure
    weights (ones, or bootstrap counts). Each member has its own optimiser state, gradient
    clipping and finiteness check; the metrics are summed over members (``weight`` too, so the
    epoch's loss is the members' mean) and ``finite`` is whether every member's step was."""

    def one(member):
        state, w = member
        return train_step(model, tx, spec, ema_decay, state, scale, reweighted(batch, w), lr)

    new, metrics = over_members(one, (state, weights))
    out = {k: jnp.sum(v) for k, v in metrics.items() if k != "finite"}
    out["finite"] = jnp.all(metrics["finite"])
    return new, out


def loss_counts(spec: LossSpec, batch) -> dict[str, jax.Array]:
    """The counts of :func:`loss_sums` (they depend on the labels only, not on the model)."""
    counts = {}
    if spec.energy_weight > 0:
        counts["energy"] = batch.energy_weight.sum()
    if spec.forces_weight > 0:
        counts["forces"] = 3.0 * force_weights(batch).sum()
    for term in spec.properties:
        if term.weight > 0:
            counts[term.key] = property_weights(spec, batch)[term.key].sum()
    return counts


def sharded_train_step(
    model, tx, spec: LossSpec, ema_decay, axis: str, state: TrainState, scale, batch, lr
):
    """:func:`train_step` on one device's share of a batch inside ``shard_map`` over ``axis``.

    The loss counts are summed over the devices first, so that each device's loss is its part of
    the global-batch mean; losses and gradients are then summed (``psum``), which gives exactly
    the global-batch loss and gradient (not a mean of per-device means). The update that
    follows is the same on every device.
    """
    need_forces = spec.forces_weight > 0
    counts = jax.lax.psum(loss_counts(spec, batch), axis)

    def loss_fn(params):
        (de_atom, _, df), dp, _ = residuals(
            dataclasses.replace(spec, ensemble=None), model, params, scale, batch, need_forces
        )
        sums = loss_sums(spec, de_atom, df, batch, None, dp)
        terms = {k: s / jnp.maximum(counts[k], 1.0) for k, (s, _) in sums.items()}
        return total_loss(spec, terms), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    loss, terms, grads, weight = jax.lax.psum((loss, terms, grads, batch.weight.sum()), axis)
    return apply_gradients(tx, ema_decay, state, lr, loss, terms, grads, weight)


def initial_state(params, tx, committee: bool = False) -> TrainState:
    """The training state at step 0: a copy of ``params`` (the compiled step donates its state),
    the optimiser's initial state and the EMA starting at the parameters. For a ``committee``
    every member gets its own (a leading member axis on every leaf, the step counter too)."""
    if committee:
        return jax.vmap(lambda p: initial_state(p, tx))(params)
    params = jax.tree.map(jnp.copy, params)
    return TrainState(
        params=params,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params),
        step=jnp.zeros((), jnp.int32),
    )


def compiled_train_step(model, tx, spec: LossSpec, ema_decay, on_trace=None, committee=False):
    """:func:`train_step` jitted with the state donated: ``step(state, scale, batch, lr)``;
    for a ``committee`` :func:`committee_train_step`, ``step(state, scale, batch, lr, weights)``.
    ``on_trace()`` runs once per trace (per batch shape), e.g. to count compilations."""

    def step(state, scale, batch, lr):
        if on_trace is not None:
            on_trace()
        return train_step(model, tx, spec, ema_decay, state, scale, batch, lr)

    def members_step(state, scale, batch, lr, weights):
        if on_trace is not None:
            on_trace()
        return committee_train_step(model, tx, spec, ema_decay, state, scale, batch, lr, weights)

    return jax.jit(members_step if committee else step, donate_argnums=0)


def eval_step(model, spec: LossSpec, forces: bool, params, scale, batch, committee=False):
    """Sums of errors and of the loss terms over a batch (no update); being sums, they do not
    depend on how a data set is cut into batches. A ``committee`` is judged by its members'
    mean prediction (and a shallow ensemble also by the ensemble score of its σ)."""
    (de_atom, de, df), dp, spread = residuals(spec, model, params, scale, batch, forces, committee)
    sums = error_sums(de_atom, de, df, batch, dp, spec)
    for key, (total, _) in loss_sums(spec, de_atom, df, batch, spread, dp).items():
        sums[f"loss_{key}_sum"] = total
    return sums


def sharded_eval_step(model, spec: LossSpec, forces: bool, axis: str, params, scale, batch):
    """:func:`eval_step` on one device's share of a batch, summed over the devices of ``axis``."""
    return jax.lax.psum(eval_step(model, spec, forces, params, scale, batch), axis)


def evaluation_loss(spec: LossSpec, total: dict[str, float]) -> float | None:
    """The loss of a whole data set from summed terms (mean per structure and per component)."""
    out = 0.0
    extra = spec.ensemble_weight if spec.ensemble is not None else 0.0
    if spec.energy_weight > 0:
        if not total.get("n_energy"):
            return None
        out += spec.energy_weight * total["loss_energy_sum"] / total["n_energy"]
        if extra:
            key = f"loss_energy_{spec.ensemble}_sum"
            out += extra * spec.energy_weight * total.get(key, 0.0) / total["n_energy"]
    if spec.forces_weight > 0:
        if not total.get("n_forces"):
            return None
        out += spec.forces_weight * total["loss_forces_sum"] / total["n_forces"]
        if extra:
            key = f"loss_forces_{spec.ensemble}_sum"
            out += extra * spec.forces_weight * total.get(key, 0.0) / total["n_forces"]
    for term in spec.properties:
        if term.weight > 0:
            count = total.get(f"n_prop_{term.key}")
            if not count:
                return None
            out += term.weight * total[f"loss_{term.key}_sum"] / count
    return out


def reduce_sums(
    parts: list[dict[str, jax.Array]], spec: LossSpec | None = None
) -> dict[str, float]:
    """Add per-batch sums (one device→host transfer) and turn them into MAE/RMSE figures
    (and, given the loss ``spec``, the evaluation loss). A ``spec`` that trains neither
    energies nor forces (property targets alone) gives no energy figures: they would be the
    error of an untrained output."""
    if not parts:
        return {}
    total = jax.tree.map(lambda *x: float(sum(x)), *jax.device_get(parts))
    loss = None if spec is None else evaluation_loss(spec, total)
    out: dict[str, float] = {}
    n_e = total.get("n_energy", 0.0)
    energy_trained = spec is None or spec.energy_weight > 0 or spec.forces_weight > 0
    if n_e > 0 and energy_trained:
        out["energy_mae"] = total["energy_abs"] / n_e
        out["energy_rmse"] = (total["energy_sq"] / n_e) ** 0.5
        out["energy_atom_mae"] = total["energy_atom_abs"] / n_e
        out["energy_atom_rmse"] = (total["energy_atom_sq"] / n_e) ** 0.5
    n_f = total.get("n_forces", 0.0)
    if n_f > 0:
        out["forces_mae"] = total["forces_abs"] / n_f
        out["forces_rmse"] = (total["forces_sq"] / n_f) ** 0.5
    for name in total:
        if name.startswith("n_prop_") and total[name] > 0:
            key, n_p = name[len("n_prop_"):], total[name]
            out[f"{key}_mae"] = total[f"prop_{key}_abs"] / n_p
            out[f"{key}_rmse"] = (total[f"prop_{key}_sq"] / n_p) ** 0.5
    if loss is not None:
        out["loss"] = loss
    for quantity, count in (("energy", n_e), ("forces", n_f)):  # a shallow ensemble's scores
        for kind in ENSEMBLE_LOSSES:
            key = f"loss_{quantity}_{kind}_sum"
            if key in total and count > 0:
                out[f"{quantity}_{kind}"] = total[key] / count
    if total.get("weight", 0.0) > 0:  # training steps: batch means weighted by batch size
        for key in total:
            if key.startswith("loss"):
                out[key] = total[key] / total["weight"]
    return out
