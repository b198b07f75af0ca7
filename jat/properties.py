"""Property targets: molecular and atomic properties formed from a network's per-atom outputs.

One home for turning network outputs into properties, used by training
(:mod:`jat.training.steps`), evaluation and :class:`jat.Potential`. A :class:`Target` names a
property (a key of :attr:`jat.data.Structure.properties`), its kind, the network output it is
read from, and its normalisation, fitted on the training set so that the network sees O(1)
values:

- ``extensive``: P_g = Σ_{i∈g} (s y_i + μ_Z(i)), a sum of atomic contributions plus a
  per-species reference μ_Z (least squares on element counts), e.g. U0, H, G, zpve, Cv, alpha;
- ``intensive``: P_g = s mean_{i∈g} y_i + m, the mean over atoms, m and s the labels' mean and
  standard deviation, e.g. homo, lumo, gap;
- ``atomic``: p_i = s y_i + μ_Z(i), per atom, μ_Z the per-species mean, e.g. mulliken_charges;
- ``dipole``: μ_g = Σ_{i∈g} q_i (r_i − r̄_g) + Σ_{i∈g} μ_i in e·Å, with r̄_g the centroid of
  the atoms and the charges q_i constrained to the structure's total charge Q_g (0 by default)
  by subtracting (Σ_i q_i − Q_g)/n_g from each. q_i and μ_i are PaiNN's dipole head
  (``charges``, ``atomic_dipoles``); for any other network q_i is a property channel and there
  are no atomic dipoles (the "charge-only" model). The label is |μ| (QM9's ``mu``).

Values are computed in two parts, as energies are: :func:`property_values` on the device,
without the references (μ_Z, m), and :meth:`Target.reference` in float64 on the host, so that a
reference of thousands of eV (U0) never passes through float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("extensive", "intensive", "dipole", "atomic")
#: ε (e²Å²) in |μ| = sqrt(|μ|² + ε), finite gradient at μ = 0
NORM_EPS = 1e-10
#: the channel of a dipole target read from PaiNN's dipole head
HEAD = -1
#: 1 e·Å in Debye
DEBYE_PER_EA = 1.0 / 0.20819433


@dataclasses.dataclass(frozen=True)
class Target:
    """A property target of a potential.

    Attributes:
        key: the property's name (a key of ``Structure.properties``).
        kind: one of :data:`KINDS`.
        channel: the column of the network's ``properties`` output (N, P) it is read from, or
            :data:`HEAD` (−1) for a dipole from PaiNN's dipole head.
        scale: s, the property's unit per network output (for a dipole: e per output of a
            charge channel, 1).
        offset: m, the intensive mean (unit of the property); 0 for the other kinds.
        shift: μ_Z (S,) per species (unit of the property per atom), extensive and atomic only;
            empty otherwise.
    """

    key: str
    kind: str
    channel: int
    scale: float = 1.0
    offset: float = 0.0
    shift: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"target {self.key!r}: unknown kind {self.kind!r}; choose from "
                             f"{', '.join(KINDS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"target {self.key!r}: scale must be positive, got {self.scale}")

    def reference(self, species: np.ndarray) -> Any:
        """The host part of the value (float64) for real atoms' ``species`` (n,): Σ μ_Z
        (extensive), m (intensive), μ_Z per atom (atomic, (n,)), 0 (dipole)."""
        species = np.asarray(species)
        species = species[species >= 0]
        shift = np.asarray(self.shift, np.float64)
        if self.kind == "extensive":
            return float(np.sum(shift[species])) if shift.size else 0.0
        if self.kind == "atomic":
            return shift[species] if shift.size else np.zeros(len(species))
        if self.kind == "intensive":
            return float(self.offset)
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the potential's metadata)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "channel": int(self.channel),
            "scale": float(self.scale),
            "offset": float(self.offset),
            "shift": [float(x) for x in self.shift],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {"key", "kind", "channel", "scale", "offset", "shift"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        channel = d.get("channel")
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise TypeError(f"channel must be an integer, got {channel!r}")
        return cls(
            key=str(d["key"]),
            kind=str(d["kind"]),
            channel=channel,
            scale=float(d.get("scale", 1.0)),
            offset=float(d.get("offset", 0.0)),
            shift=tuple(float(x) for x in d.get("shift", ())),
        )


def assign_channels(
    entries: Sequence[tuple[str, str]], dipole_head: bool = False
) -> tuple[tuple[Target, ...], int]:
    """Targets (unnormalised) for ``entries`` (key, kind), each with its own channel, and P, the
    number of property channels the network needs. With ``dipole_head`` (PaiNN) a dipole target
    reads the dipole head and takes no channel."""
    targets, p = [], 0
    for key, kind in entries:
        if kind == "dipole" and dipole_head:
            targets.append(Target(key, kind, HEAD))
        else:
            targets.append(Target(key, kind, p))
            p += 1
    return tuple(targets), p


def property_channels(targets: Sequence[Target]) -> int:
    """P, the number of property channels ``targets`` read (1 + their largest channel)."""
    return max((t.channel + 1 for t in targets), default=0)


# ---------------------------------------------------------------------------------------------
# normalisation, fitted on the training set (host, float64)


def fit_target(target: Target, structures: Sequence[Any], species: Sequence[str]) -> Target:
    """``target`` with its normalisation fitted on the labelled ``structures`` (those whose
    ``properties`` hold its key): per-species least squares (extensive: on element counts;
    atomic: per atom) and the RMS residual per atom as scale; the mean and standard deviation
    (intensive); scale 1 e for a dipole's charges. Raises ValueError when none is labelled."""
    labelled = [s for s in structures if target.key in s.properties]
    if not labelled:
        raise ValueError(f"no training structure has the property {target.key!r}")
    lookup = {x: k for k, x in enumerate(species)}
    n_s = len(species)
    if target.kind == "dipole":
        return dataclasses.replace(target, scale=1.0, offset=0.0, shift=())
    if target.kind == "intensive":
        y = np.array([float(s.properties[target.key]) for s in labelled])
        return dataclasses.replace(target, scale=_positive(np.std(y)), offset=float(np.mean(y)),
                                   shift=())
    if target.kind == "extensive":
        counts = np.zeros((len(labelled), n_s))
        for r, s in enumerate(labelled):
            np.add.at(counts[r], [lookup[x] for x in s.symbols], 1.0)
        y = np.array([float(s.properties[target.key]) for s in labelled])
        shift = np.linalg.lstsq(counts, y, rcond=None)[0]
        residual = (y - counts @ shift) / counts.sum(axis=1)
    else:  # atomic
        z = np.concatenate([[lookup[x] for x in s.symbols] for s in labelled]).astype(int)
        y = np.concatenate([np.asarray(s.properties[target.key], np.float64).reshape(-1)
                            for s in labelled])
        if len(y) != len(z):
            raise ValueError(f"property {target.key!r} is not one value per atom")
        total = np.bincount(z, weights=y, minlength=n_s)
        count = np.bincount(z, minlength=n_s)
        shift = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        residual = y - shift[z]
    scale = _positive(np.sqrt(np.mean(residual**2)))
    return dataclasses.replace(target, scale=scale, offset=0.0,
                               shift=tuple(float(x) for x in shift))


def _positive(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) and x > 1e-8 else 1.0


# ---------------------------------------------------------------------------------------------
# the device part (jittable; static shapes, padding masked)


def constrained_charges(q: jax.Array, graph: Any, charge: jax.Array | None = None) -> jax.Array:
    """Charges q_i (N,) e shifted per structure so that Σ_{i∈g} q_i = Q_g (``charge`` (G,) e,
    default 0): q_i − (Σ_g q − Q_g)/n_g on real atoms, 0 on padded ones."""
    mask = graph.node_mask
    g = graph.node_graph
    n_graphs = graph.n_graphs
    q = jnp.where(mask, q, 0.0)
    total = jax.ops.segment_sum(q, g, n_graphs)
    count = jax.ops.segment_sum(mask.astype(q.dtype), g, n_graphs)
    target = jnp.zeros_like(total) if charge is None else charge
    excess = (total - target) / jnp.maximum(count, 1.0)
    return jnp.where(mask, q - excess[g], 0.0)


def dipole_vector(
    q: jax.Array, atomic: jax.Array | None, graph: Any, charge: jax.Array | None = None
) -> jax.Array:
    """μ_g (G, 3) e·Å = Σ_i q_i (r_i − r̄_g) + Σ_i μ_i from raw charges q (N,) e (constrained
    here, :func:`constrained_charges`) and atomic dipoles (N, 3) e·Å or None."""
    mask = graph.node_mask
    g = graph.node_graph
    n_graphs = graph.n_graphs
    r = jnp.where(mask[:, None], graph.positions, 0.0)
    count = jax.ops.segment_sum(mask.astype(r.dtype), g, n_graphs)
    centroid = jax.ops.segment_sum(r, g, n_graphs) / jnp.maximum(count, 1.0)[:, None]
    qc = constrained_charges(q, graph, charge)
    d = jnp.where(mask[:, None], r - centroid[g], 0.0)
    mu = jax.ops.segment_sum(qc[:, None] * d, g, n_graphs)
    if atomic is not None:
        mu = mu + jax.ops.segment_sum(jnp.where(mask[:, None], atomic, 0.0), g, n_graphs)
    return mu


def norm(mu: jax.Array) -> jax.Array:
    """|μ| over the last axis, sqrt(|μ|² + ε): a finite gradient at 0."""
    return jnp.sqrt(jnp.sum(mu * mu, axis=-1) + NORM_EPS)


def target_value(
    target: Target, extras: Mapping[str, jax.Array], graph: Any,
    charge: jax.Array | None = None,
) -> jax.Array:
    """One target's value from a network's further outputs ``extras`` on ``graph``, without
    its reference: (G,) extensive and intensive, (N,) atomic (0 on padding), (G, 3) dipole."""
    mask = graph.node_mask
    g = graph.node_graph
    n_graphs = graph.n_graphs
    if target.kind == "dipole" and target.channel == HEAD:
        return dipole_vector(extras["charges"], extras["atomic_dipoles"], graph, charge)
    y = jnp.where(mask, extras["properties"][:, target.channel], 0.0) * target.scale
    if target.kind == "dipole":
        return dipole_vector(y, None, graph, charge)
    if target.kind == "atomic":
        return y
    total = jax.ops.segment_sum(y, g, n_graphs)
    if target.kind == "extensive":
        return total
    count = jax.ops.segment_sum(mask.astype(y.dtype), g, n_graphs)
    return total / jnp.maximum(count, 1.0)


def property_values(
    targets: Sequence[Target], extras: Mapping[str, jax.Array], graph: Any,
    *, members: bool = False, charge: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Every target's value (see :func:`target_value`) by key. ``members``: the extras have a
    leading member axis K (a committee, a shallow ensemble), and so do the values."""
    if not targets:
        return {}
    if members:
        return jax.vmap(lambda e: property_values(targets, e, graph, charge=charge))(extras)
    return {t.key: target_value(t, extras, graph, charge) for t in targets}


def compared(target: Target, value: jax.Array) -> jax.Array:
    """What a label of ``target`` is compared with: |μ| (G,) for a dipole, else the value."""
    return norm(value) if target.kind == "dipole" else value


__all__ = [
    "DEBYE_PER_EA",
    "HEAD",
    "KINDS",
    "Target",
    "assign_channels",
    "compared",
    "constrained_charges",
    "dipole_vector",
    "fit_target",
    "norm",
    "property_channels",
    "property_values",
    "target_value",
]
