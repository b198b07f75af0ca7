"""ASE calculator backed by a :class:`jat.Potential`, made for molecular dynamics.

``JATCalculator`` keeps a Verlet neighbour list between calls instead of building one per call:

* The list holds every pair closer than ``cutoff + skin`` (default skin 1 Å) when it is built.
  As long as no atom has moved more than ``skin / 2`` from where it was then (and the cell, the
  periodicity, the atom count and the species are unchanged), every pair now closer than the
  cutoff is still in it, so the list is reused: a step gathers the stored senders, receivers and
  periodic shifts, computes the edge vectors from the current positions, keeps the edges shorter
  than the cutoff (compacted, in receiver order, into a model-sized edge buffer) and runs the
  model on those. The result is the same as a fresh build would give (same edges; only the
  summation order may differ in the last bit).
* Displacements are measured on the positions as ASE holds them, not wrapped into the cell, so an
  atom that ASE (or the user) wraps across a periodic boundary shows a jump of a lattice vector
  and triggers a rebuild: the stored shifts are never applied to a wrapped atom. Any change of
  the cell (NPT, cell optimisation) also triggers a rebuild.
* Static shapes: atoms are padded to a multiple of 8; the list capacity comes from
  :func:`jat.graph.allocate` (with headroom, on its capacity ladder) and the model's edge
  capacity from the same ladder. When the compiled code reports that either bound was exceeded,
  the bound is regrown on the host and the step is repeated, so a long run compiles a handful of
  times, never once per step. Compiled functions live in the potential and are shared by its
  calculators.

Energies in eV, forces eV/Å, stress eV/Å³ (Voigt order, ASE's sign convention: the derivative of
the energy per volume with respect to strain). Stress is available for fully periodic cells only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from jat import graph
from jat.graph.neighbors import EDGE_HEADROOM
from jat.graph.neighbors import _bucket as _capacity_bucket
from jat.potential import _bucket as _atom_bucket
from jat.potential import _network_energy, _precision

DEFAULT_SKIN = 1.0  # Å
MAX_REGROW = 8


def _evaluate_list(
    model, cutoff, capacity, stress, params, scale, positions, species, cell, senders, receivers,
    shifts, mask,
):
    """Energy, per-atom energies, forces (and virial) from a stored neighbour list.

    positions (N, 3) Å, species (N,) (negative = padding), cell (3, 3); the list (E,) holds
    every pair within cutoff + skin at its build. Edges shorter than ``cutoff`` now are compacted
    (receiver order kept) into ``capacity`` slots; ``n_edges`` says how many there were, so the
    host can tell an overflow (``n_edges > capacity``) and regrow.
    """
    n = positions.shape[0]
    vec = positions[senders] - positions[receivers] + shifts.astype(positions.dtype) @ cell
    within = mask & (jnp.sum(vec * vec, axis=-1) < cutoff * cutoff)
    count = jnp.sum(within, dtype=jnp.int32)
    (idx,) = jnp.nonzero(within, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < count
    nbrs = graph.Neighbors(
        senders=jnp.where(valid, senders[idx], n)[None],
        receivers=jnp.where(valid, receivers[idx], n)[None],
        shifts=jnp.where(valid[:, None], shifts[idx], 0)[None],
        mask=valid[None],
        n_edges=count[None],
        overflow=(count > capacity)[None],
    )
    fn = functools.partial(_network_energy, model, params, scale)
    lattice = cell[None]
    strain = jnp.zeros_like(lattice)
    argnums = (0, 3) if stress else (0,)
    (_, energies), grads = jax.value_and_grad(fn, argnums=argnums, has_aux=True)(
        positions[None], species[None], lattice, strain, nbrs
    )
    out = {
        "energy": energies.sum(axis=1)[0],
        "energies": energies[0],
        "forces": -grads[0][0],
        "n_edges": count,
    }
    if stress:
        out["virial"] = grads[1][0]
    return out


_build = jax.jit(graph.build, static_argnums=3)


@dataclasses.dataclass
class _NeighborState:
    """The stored neighbour list and what it was built for (host side)."""

    spec: graph.NeighborSpec
    n_atoms: int
    pbc: tuple[bool, bool, bool]
    numbers: np.ndarray  # atomic numbers at the build
    cell: np.ndarray  # cell at the build
    reference: np.ndarray  # positions (N, 3) at the build, as given (not wrapped)
    species: Any = None  # device (N_pad,) species indices, -1 for padding
    senders: Any = None
    receivers: Any = None
    shifts: Any = None
    mask: Any = None
    capacity: int = 0  # model edge capacity (edges within the cutoff)


class JATCalculator(Calculator):
    """ASE calculator: energy, free_energy, per-atom energies, forces and stress of a potential.

    Args:
        potential: a :class:`jat.Potential`.
        skin: Verlet skin in Å (default 1.0). The neighbour list holds pairs within
            cutoff + skin and is rebuilt only when an atom has moved more than skin / 2 since the
            last build, or the cell, periodicity, atom count or species changed. ``skin=0``
            rebuilds whenever anything moved.
        dtype: "float32" or "float64" to evaluate in that precision (a cast copy of the
            potential); default: the potential's own dtype (float32 unless created otherwise).
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
        rebuilds: neighbour-list builds so far (the first one included).
        allocations: host-side (re)allocations of the list's static sizes (first one included).
        edge_capacity: current model edge capacity (edges within the cutoff, padded).
        shapes: the distinct (padded atoms, list capacity, edge capacity, stress) shapes
            evaluated so far; each is one compilation (shared with other calculators of the
            same potential).

    Results are cached per atomic state by ASE (``check_state``): asking for energy, forces and
    stress of the same configuration evaluates once. Forces and, for fully periodic cells, the
    stress are always computed together with the energy (one compiled call).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self, potential: Any, *, skin: float = DEFAULT_SKIN, dtype: str | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        if dtype is not None:
            potential = potential.with_dtype(dtype)
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a finite number of Å >= 0, got {skin}")
        self.potential = potential
        self.skin = skin
        self.rebuilds = 0
        self.allocations = 0
        self.shapes: set[tuple[int, int, int, bool]] = set()
        self._state: _NeighborState | None = None
        self._lookup = np.full(len(chemical_symbols), -1, np.int32)
        for k, symbol in enumerate(potential.species):
            self._lookup[chemical_symbols.index(symbol)] = k

    @property
    def dtype(self) -> str:
        return self.potential.dtype

    @property
    def edge_capacity(self) -> int:
        return 0 if self._state is None else self._state.capacity

    @property
    def spec(self) -> graph.NeighborSpec | None:
        """Static sizes of the stored neighbour list (cutoff = potential cutoff + skin)."""
        return None if self._state is None else self._state.spec

    # ---------------------------------------------------------------- ASE interface

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pbc = tuple(bool(p) for p in atoms.get_pbc())
        periodic = all(pbc)
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress needs a fully periodic structure (pbc = True on all axes)"
            )
        positions = np.asarray(atoms.get_positions(), dtype=np.float64)
        numbers = np.asarray(atoms.get_atomic_numbers())
        cell = np.asarray(atoms.get_cell()[:], dtype=np.float64)
        self._check(positions, numbers, cell, pbc)
        out, species = self._compute(positions, numbers, cell, pbc, periodic)
        n = len(positions)
        shift = self.potential.energy_shift[species]
        energies = np.asarray(out["energies"][:n], np.float64) + shift
        energy = float(out["energy"]) + float(np.sum(shift))
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": np.asarray(out["forces"][:n], np.float64),
        }
        if periodic:
            volume = abs(float(np.linalg.det(cell)))
            sigma = np.asarray(out["virial"], np.float64) / volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(sigma)

    # ---------------------------------------------------------------- internals

    def _check(self, positions, numbers, cell, pbc) -> None:
        if not np.all(np.isfinite(positions)):
            bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
            raise ValueError(f"positions of atom {bad} are not finite: {positions[bad]}")
        known = (numbers >= 0) & (numbers < len(self._lookup))
        species = np.where(known, self._lookup[np.clip(numbers, 0, len(self._lookup) - 1)], -1)
        if np.any(species < 0):
            k = int(np.argmax(species < 0))
            z = int(numbers[k])
            name = chemical_symbols[z] if known[k] else f"Z={z}"
            raise ValueError(
                f"atom {k} is {name}, an element this potential was not trained on "
                f"(trained species: {', '.join(self.potential.species)})"
            )
        periodic = [k for k in range(3) if pbc[k]]
        if periodic:
            if not np.all(np.isfinite(cell)):
                raise ValueError(f"cell contains NaN or inf: {cell.tolist()}")
            rows = cell[periodic]
            if np.linalg.matrix_rank(rows, tol=1e-8 * max(1.0, np.abs(rows).max())) < len(
                periodic
            ):
                axes = "".join("xyz"[k] for k in periodic)
                raise ValueError(
                    f"pbc={list(pbc)} needs {len(periodic)} independent lattice vectors along "
                    f"the periodic axes ({axes}), but the cell {cell.tolist()} is singular or "
                    "zero there: set atoms.cell (rows are lattice vectors) or use pbc=False"
                )

    def _species(self, numbers) -> np.ndarray:
        return self._lookup[numbers]

    def _compute(self, positions, numbers, cell, pbc, stress):
        pot = self.potential
        n = len(positions)
        st = self._state
        if st is None or st.n_atoms != n or st.pbc != pbc:
            st = self._state = self._allocate(positions, numbers, cell, pbc)
        elif self._needs_rebuild(st, positions, numbers, cell):
            self._rebuild(st, positions, numbers, cell)
        pos = self._padded(positions)
        lattice = np.asarray(cell, np.dtype(pot.dtype))
        with _precision(pot.dtype):
            params, scale = pot._device_constants()
            for _ in range(MAX_REGROW):
                fn = self._function(st.capacity, stress)
                self.shapes.add((len(pos), int(st.senders.shape[0]), st.capacity, stress))
                out = fn(
                    params, scale, pos, st.species, lattice, st.senders, st.receivers,
                    st.shifts, st.mask,
                )
                out = jax.device_get(out)
                if int(out["n_edges"]) <= st.capacity:
                    return out, self._species(numbers)
                st.capacity = _capacity_bucket(int(out["n_edges"]) * EDGE_HEADROOM)
        raise RuntimeError(f"edge capacity still too small after {MAX_REGROW} regrow steps")

    def _needs_rebuild(self, st, positions, numbers, cell) -> bool:
        if not np.array_equal(numbers, st.numbers):
            return True
        if any(st.pbc) and not np.array_equal(cell, st.cell):
            return True
        moved = np.max(np.sum((positions - st.reference) ** 2, axis=1), initial=0.0)
        return bool(moved > (0.5 * self.skin) ** 2)

    def _padded(self, positions):
        n_pad = _atom_bucket(len(positions))
        pos = np.zeros((n_pad, 3), np.dtype(self.potential.dtype))
        pos[: len(positions)] = positions
        return pos

    def _allocate(self, positions, numbers, cell, pbc) -> _NeighborState:
        """A new list for a new atom count or periodicity: static sizes fitted to this geometry."""
        spec = self._fit(positions, cell, pbc)
        st = _NeighborState(spec, len(positions), pbc, numbers, cell, positions)
        self._rebuild(st, positions, numbers, cell)
        return st

    def _fit(self, positions, cell, pbc) -> graph.NeighborSpec:
        self.allocations += 1
        pos = self._padded(positions).astype(np.float64)
        mask = np.arange(len(pos)) < len(positions)
        cutoff = self.potential.cutoff + self.skin
        return graph.allocate(pos, cutoff, cell=cell if any(pbc) else None, pbc=pbc, mask=mask)

    def _rebuild(self, st: _NeighborState, positions, numbers, cell) -> None:
        pot = self.potential
        pos = self._padded(positions)
        n_pad = len(pos)
        mask = np.arange(n_pad) < len(positions)
        lattice = np.asarray(cell, pos.dtype) if any(st.pbc) else None
        with _precision(pot.dtype):
            for _ in range(MAX_REGROW):
                nbrs = _build(pos, lattice, mask, st.spec)
                if not bool(nbrs.overflow):
                    break
                st.spec = self._fit(positions, cell, st.pbc)
            else:
                raise RuntimeError(f"neighbour list still overflows after {MAX_REGROW} tries")
            species = np.full(n_pad, -1, np.int32)
            species[: len(positions)] = self._species(numbers)
            st.species = jnp.asarray(species)
        self.rebuilds += 1
        st.senders, st.receivers, st.shifts, st.mask = (
            nbrs.senders, nbrs.receivers, nbrs.shifts, nbrs.mask
        )
        st.numbers = numbers.copy()
        st.cell = cell.copy()
        st.reference = positions.copy()
        if st.capacity == 0:  # first build of this allocation: size the model's edge buffer
            st.capacity = _capacity_bucket(self._count_within(st, positions, cell) * EDGE_HEADROOM)

    def _count_within(self, st, positions, cell) -> int:
        """Edges of the stored list shorter than the cutoff (host, float64)."""
        m = np.asarray(st.mask)
        s, r = np.asarray(st.senders)[m], np.asarray(st.receivers)[m]
        shifts = np.asarray(st.shifts)[m].astype(np.float64)
        vec = positions[s] - positions[r] + shifts @ (cell if any(st.pbc) else np.zeros((3, 3)))
        return int(np.count_nonzero(np.sum(vec**2, axis=1) < self.potential.cutoff**2))

    def _function(self, capacity: int, stress: bool):
        pot = self.potential
        key = ("calculator", capacity, stress)
        fn = pot._cache.get(key)
        if fn is None:
            f = functools.partial(_evaluate_list, pot.energy_model, pot.cutoff, capacity, stress)
            fn = pot._cache[key] = jax.jit(f)
        return fn


__all__ = ["DEFAULT_SKIN", "JATCalculator"]
