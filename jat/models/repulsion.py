"""Short-range nuclear repulsion (Ziegler–Biersack–Littmark universal screened Coulomb potential).

A learned potential only knows the distances its training data cover. Two atoms pushed closer
than any reference configuration (a hot MD trajectory does this within picoseconds) can fall into
a spurious hole and fuse. A fixed ZBL pair term, switched off smoothly well inside the bond
lengths, gives every pair the physical wall at short range and leaves the learned region alone:

    V(r) = k_e Z_a Z_b / r · φ(r / a) · u(r / r_ab),   a = 0.46850 Å / (Z_a^0.23 + Z_b^0.23),
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x)
           + 0.02817 e^(−0.20162 x),

with k_e = 14.399645 eV·Å and u the polynomial envelope (p = 6: value and two derivatives vanish
at r_ab), so the term is exactly zero beyond r_ab. The switch-off distances r_ab, capped at the
neighbour cutoff, come either

- from the training data (:func:`shortest_distances`, what ``python -m jat.train`` does): r_ab is
  the shortest a–b distance in the training set, so the term is zero on every training
  configuration and walls off exactly the distances the network never saw (as pacemaker's core
  repulsion does with its inner cutoff); or
- from covalent radii R (``ase.data``, Cordero et al. 2008): r_ab = radius_scale · (R_a + R_b),
  for pairs the data never bring within the cutoff and for potentials built without data.

Bonded covalent radii alone are too short for non-bonded pairs: on EAN, H–H pairs are never
closer than 1.38 Å, but 0.8 (R_H + R_H) = 0.50 Å, and a model trained there was seen to pull
two hydrogens to 0.5 Å within 3 ps of NVE.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from jat.models.blocks import edge_lengths, polynomial_envelope, segment_sum

COULOMB = 14.399645  # e² / (4π ε0) in eV·Å
_ZBL_A = 0.46850  # Å (0.8854 a_0)
_ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
REPULSIONS = ("zbl",)


@dataclasses.dataclass(frozen=True)
class ZBL:
    """ZBL repulsion between every pair of atoms closer than r_ab (see the module docstring).

    numbers: atomic number of each species index; cutoff: the neighbour cutoff r_c (Å), an upper
    bound for r_ab; radius_scale: r_ab as a multiple of the sum of covalent radii, for the pairs
    without an explicit radius; radii: (S, S) explicit r_ab in Å (symmetric; NaN = use the
    covalent rule), or None.
    """

    numbers: tuple[int, ...]
    cutoff: float
    radius_scale: float = 0.8
    radii: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        if not self.numbers or any(not 0 < z < len(covalent_radii) for z in self.numbers):
            top = len(covalent_radii) - 1
            raise ValueError(f"ZBL needs atomic numbers 1…{top}: {self.numbers}")
        if not self.radius_scale > 0:
            raise ValueError(f"radius_scale must be positive, got {self.radius_scale}")
        if not self.cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.radii is not None:
            r = np.asarray(self.radii, float)
            n = len(self.numbers)
            if r.shape != (n, n):
                raise ValueError(f"radii must be {n} x {n} (a pair of species each), got {r.shape}")
            if not np.array_equal(r, r.T, equal_nan=True) or np.any(r[np.isfinite(r)] <= 0):
                raise ValueError("radii must be symmetric and positive (NaN: covalent rule)")

    @property
    def pair_radii(self) -> np.ndarray:
        """(S, S) switch-off distances r_ab in Å."""
        radii = covalent_radii[np.asarray(self.numbers)]
        r_ab = self.radius_scale * (radii[:, None] + radii[None, :])
        if self.radii is not None:
            given = np.asarray(self.radii, float)
            r_ab = np.where(np.isfinite(given), given, r_ab)
        return np.minimum(r_ab, self.cutoff)

    def pair_energy(self, r: jax.Array, z_a: jax.Array, z_b: jax.Array, r_ab: jax.Array):
        """V(r) in eV for distances r (Å) > 0 and atomic numbers z_a, z_b (broadcast)."""
        z_a = z_a.astype(r.dtype)
        z_b = z_b.astype(r.dtype)
        x = r * (z_a**0.23 + z_b**0.23) / _ZBL_A
        terms = zip(_ZBL_COEFFICIENTS, _ZBL_EXPONENTS, strict=True)
        phi = sum(c * jnp.exp(-k * x) for c, k in terms)
        return COULOMB * z_a * z_b / r * phi * polynomial_envelope(r, r_ab)

    def atomic_energies(
        self,
        species: jax.Array,
        edge_vectors: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
    ) -> jax.Array:
        """Per-atom repulsion (N,) in eV: half of V(r_ij) for each edge into atom i.

        Same inputs as the models: species (N,) indices (negative = padding), edge_vectors
        (E, 3) Å, senders and receivers (E,) sorted by receiver, edge_mask (E,). Each pair
        appears once in each direction in a full edge list, so the atoms sum to Σ_pairs V.
        """
        n = species.shape[0]
        dtype = edge_vectors.dtype
        numbers = jnp.asarray(self.numbers, jnp.int32)
        radii = jnp.asarray(self.pair_radii, dtype)
        s_i = jnp.maximum(species[receivers.clip(0, n - 1)], 0)
        s_j = jnp.maximum(species[senders.clip(0, n - 1)], 0)
        r = edge_lengths(edge_vectors, edge_mask)
        r_ab = radii[s_i, s_j]
        active = edge_mask & (r < r_ab)
        safe_r = jnp.where(active, r, 1.0)
        v = self.pair_energy(safe_r, numbers[s_i], numbers[s_j], r_ab)
        e = segment_sum(jnp.where(active, 0.5 * v, 0.0), receivers, n)
        return jnp.where(species >= 0, e, 0.0)

    def to_dict(self) -> dict:
        """What a saved potential records (the numbers and cutoff come from the potential)."""
        out: dict = {"kind": "zbl", "radius_scale": self.radius_scale}
        if self.radii is not None:  # JSON has no NaN: null marks the covalent rule
            out["radii"] = [[None if np.isnan(x) else x for x in row] for row in self.radii]
        return out


def make_repulsion(
    spec: str | Mapping[str, Any] | ZBL | None, symbols: Sequence[str], cutoff: float
) -> ZBL | None:
    """A repulsion from ``None``/"none", "zbl", a ``{"kind": "zbl", ...}`` mapping (as saved;
    ``radii`` (S, S) in Å with None or NaN for the covalent rule) or a ZBL."""
    from ase.data import atomic_numbers

    if spec is None or spec == "none":
        return None
    if isinstance(spec, ZBL):
        return spec
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"repulsion must be None, 'zbl', a mapping or a ZBL, got {type(spec)}")
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in REPULSIONS:
        raise ValueError(f"unknown repulsion {kind!r}; choose from none, {', '.join(REPULSIONS)}")
    unknown = set(options) - {"radius_scale", "radii"}
    if unknown:
        raise ValueError(f"unknown ZBL option(s) {sorted(unknown)}; valid: radius_scale, radii")
    if options.get("radii") is not None:
        try:
            options["radii"] = tuple(  # one NaN object, so that equal ZBLs compare equal
                tuple(math.nan if x is None or math.isnan(x) else float(x) for x in row)
                for row in options["radii"]
            )
        except TypeError:
            raise ValueError("radii must be a list of lists of numbers or null") from None
    numbers = tuple(int(atomic_numbers[s]) for s in symbols)
    return ZBL(numbers=numbers, cutoff=float(cutoff), **options)


DATA_MARGIN = 1e-6  # relative: float32 rounding of r and r_ab (6e-8) never reaches the wall


def data_radii(structures: Iterable, species: Sequence[str], cutoff: float) -> np.ndarray:
    """(S, S) switch-off radii for ``make_repulsion``'s ``radii``: each pair's shortest distance
    in ``structures`` less a relative 1e-6, so the term is exactly zero on all of them in float32
    and float64; NaN (the covalent rule) for pairs never within ``cutoff``."""
    return shortest_distances(structures, species, cutoff) * (1.0 - DATA_MARGIN)


def shortest_distances(
    structures: Iterable, species: Sequence[str], cutoff: float
) -> np.ndarray:
    """(S, S) shortest distance in Å between atoms of species a and b over ``structures``
    (anything with ``symbols``, ``positions``, ``cell`` and ``pbc``, such as
    :class:`jat.data.Structure`), periodic images included; NaN for pairs never within
    ``cutoff``."""
    from ase.neighborlist import primitive_neighbor_list

    index = {x: k for k, x in enumerate(species)}
    n = len(species)
    best = np.full((n, n), np.inf)
    for s in structures:
        kinds = np.array([index[x] for x in s.symbols])
        pos = np.asarray(s.positions, float)
        if any(s.pbc):
            i, j, d = primitive_neighbor_list(
                "ijd", s.pbc, np.asarray(s.cell, float), pos, cutoff, self_interaction=False
            )
        else:  # small molecules: all pairs at once
            i, j = np.triu_indices(len(pos), 1)
            d = np.linalg.norm(pos[i] - pos[j], axis=1)
            keep = d < cutoff
            i, j, d = i[keep], j[keep], d[keep]
        if len(d):
            np.minimum.at(best, (kinds[i], kinds[j]), d)
    best = np.minimum(best, best.T)
    return np.where(np.isfinite(best), best, np.nan)
