"""ASE calculator backed by a :class:`jat.Potential`, made for molecular dynamics.

A thin host driver over two pieces shared with JAX-MD: the jittable skin list
(:class:`jat.graph.SkinList`) and the predictor (:func:`jat.predictor.predict`). One compiled call
per step updates the list (rebuilt on the device only when an atom moved more than skin/2 or the
cell changed), compacts the edges within the cutoff into the model's static slots and evaluates
energy, forces and (fully periodic cells) stress. When the call reports that a static bound was
exceeded, the list is re-allocated at the current positions and the step repeated
(:func:`jat.graph.fit`), so a long run compiles a handful of times, never once per step. Compiled
functions live in the potential and are shared by its calculators.

Every call checks its input (finite positions, known elements, a valid cell along periodic axes,
no two atoms at one position). Positions are translated by one vector per allocation (their
centre then) before the cast to the potential's dtype, so float32 keeps its precision far from
the origin; as in ASE, an atom that is wrapped across a periodic boundary jumps by a lattice
vector and triggers a rebuild.

Energies in eV, forces eV/Å, stress eV/Å³ (Voigt order, ASE's sign convention: the derivative of
the energy per volume with respect to strain).

For a committee (``Potential.members``) the results are the members' means, with their
calibrated standard deviations under ``energy_std``, ``energies_std``, ``forces_std`` (N, 3) and
``stress_std`` (Voigt); ``members=True`` adds ``energy_members`` (K,), ``forces_members``
(K, N, 3) and ``stress_members`` (K, 6). A :class:`jat.uncertainty.Guard` stops (or flags) a
simulation when the largest per-atom force σ passes its threshold.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jat import graph
from jat.dtypes import precision
from jat.graph.errors import INPUT
from jat.potential.inputs import StructureArrays, atom_slots, structure_arrays
from jat.potential.results import committee_results, member_results, shared_results, z_scores
from jat.predictor import composition_energy, predict_any, stress_from_virial
from jat.properties import property_values
from jat.uncertainty import Guard, GuardEvent, UncertaintyError, atom_force_std

DEFAULT_SKIN = graph.DEFAULT_SKIN


def calculator_step(
    model, stress: bool, committee: bool, params, scale, species, positions, cell, neighbors,
    member_forces: bool = True, dipole: Any = None,
):
    """One step: the skin list updated to ``positions`` (N, 3) and ``cell`` (3, 3), the model
    graph compacted from it and the predictions (with a leading member axis for a
    ``committee``, parameters stacked on it, or a model with several readout heads); returns
    (predictions, list). With a ``dipole`` target (:class:`jat.properties.Target`) the
    predictions' extras also hold its vector μ (3,) e·Å (members' mean) as ``"dipole"``."""
    neighbors = neighbors.update(positions, cell, check_slots=False)  # graph() checks them
    g, error = neighbors.graph(species, positions, cell)
    neighbors = dataclasses.replace(neighbors, error=neighbors.error | error)
    predictions = predict_any(
        model, params, scale, g, committee=committee, forces=True, stress=stress,
        member_forces=member_forces,
    )
    if dipole is not None:
        members = committee or model.heads > 1
        mu = property_values((dipole,), predictions.extras, g, members=members)[dipole.key]
        mu = jnp.mean(mu, axis=0) if members else mu
        extras = {**predictions.extras, "dipole": mu[0]}
        predictions = dataclasses.replace(predictions, extras=extras)
    return predictions, neighbors


@dataclasses.dataclass
class _State:
    """What the stored list was allocated for (host side)."""

    n_atoms: int
    pbc: tuple[bool, bool, bool]
    origin: np.ndarray  # (3,) Å subtracted from every position (their centre at allocation)
    neighbors: graph.SkinList


class JATCalculator(Calculator):
    """ASE calculator: energy, free_energy, per-atom energies, forces and stress of a potential.

    Args:
        potential: a :class:`jat.Potential`.
        skin: Verlet skin in Å (default :data:`jat.graph.DEFAULT_SKIN`). The list holds pairs
            within cutoff + skin and is rebuilt only when an atom has moved more than skin / 2
            since the last build or the cell changed; ``skin=0`` rebuilds whenever anything
            moved. A new atom count or periodicity allocates a new list.
        dtype: "float32" or "float64" to evaluate in that precision (a cast copy of the
            potential); default: the potential's own dtype.
        guard: a committee only: a :class:`jat.uncertainty.Guard` (or a number, its
            ``max_force_std`` in eV/Å, action "stop"): when the largest per-atom force σ of an
            evaluation passes it, "stop" raises :class:`jat.uncertainty.UncertaintyError`
            naming the evaluation, the atom and the value, "flag" appends a
            :class:`jat.uncertainty.GuardEvent` to ``guard_events`` and goes on.
        members: a committee only: also put every member's values in ``results``.
        forces_std: a committee only: False leaves out the σ (and members' values) of forces
            and stress, whose means are then one backward pass for a shallow ensemble (about
            one model's cost; energy σ stays). A guard needs the force σ.
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
        rebuilds: neighbour-list builds so far (the first one included).
        allocations: host-side (re)allocations of the list's static sizes (first one included).
        edge_capacity: current model edge slots (edges within the cutoff, padded).
        shapes: the distinct (padded atoms, list capacity, model slots, stress) shapes evaluated
            so far; each is one compilation (shared with other calculators of the potential).
        evaluations: evaluations so far (the step number the guard reports, from 0).
        guard_events: where a "flag" guard's threshold was passed.

    Results are cached per atomic state by ASE (``check_state``): asking for energy, forces and
    stress of the same configuration evaluates once; forces and, for fully periodic cells, the
    stress are always computed together with the energy (one compiled call).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    #: ASE's ``dipole`` (3,) e·Å is implemented too when the potential has a dipole target

    def __init__(
        self,
        potential: Any,
        *,
        skin: float = DEFAULT_SKIN,
        dtype: str | None = None,
        guard: Guard | float | None = None,
        members: bool = False,
        forces_std: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dtype is not None:
            potential = potential.with_dtype(dtype)
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a finite number of Å >= 0, got {skin}")
        if guard is not None and not isinstance(guard, Guard):
            guard = Guard(guard)
        if (guard is not None or members) and not potential.members:
            raise ValueError(
                "guard and members need a committee (a potential with members >= 2): a single "
                "potential has no uncertainty"
            )
        if guard is not None and not forces_std:
            raise ValueError("a guard needs the force σ: leave forces_std=True")
        self.potential = potential
        if potential.dipole_target is not None:
            self.implemented_properties = [*type(self).implemented_properties, "dipole"]
        self.forces_std = bool(forces_std) or not potential.members
        self.skin = skin
        self.guard = guard
        self.members = bool(members)
        self.evaluations = 0
        self.guard_events: list[GuardEvent] = []
        self.allocations = 0
        self.shapes: set[tuple[int, int, int, bool]] = set()
        self._state: _State | None = None
        self._past_builds = 0

    @property
    def dtype(self) -> str:
        return self.potential.dtype

    @property
    def edge_capacity(self) -> int:
        return 0 if self._state is None else self._state.neighbors.capacity

    @property
    def spec(self) -> graph.NeighborSpec | None:
        """Static sizes of the stored neighbour list (cutoff = potential cutoff + skin)."""
        return None if self._state is None else self._state.neighbors.spec

    @property
    def rebuilds(self) -> int:
        if self._state is None:
            return self._past_builds
        return self._past_builds + int(self._state.neighbors.builds)

    # ---------------------------------------------------------------- ASE interface

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        s = structure_arrays(self.potential.species_table, self.atoms)
        periodic = all(s.pbc)
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress needs a fully periodic structure (pbc = True on all axes)"
            )
        p = self._compute(s, periodic)
        step = self.evaluations
        self.evaluations += 1
        if self.potential.members:
            self.results = self._committee_results(p, s, periodic)
            self._add_z_scores(s)
            self._add_dipole(p)
            self._check_guard(step)
            return
        self._single_results(p, s, periodic)
        self._add_z_scores(s)
        self._add_dipole(p)

    def _add_dipole(self, p) -> None:
        if "dipole" in p.extras:
            self.results["dipole"] = np.asarray(p.extras["dipole"], np.float64)

    def _add_z_scores(self, s: StructureArrays) -> None:
        stats = self.potential.label_statistics
        if stats is None:
            return
        energy_z, forces_z = z_scores(
            stats, self.results["energy"], self.results["forces"],
            self.potential.energy_shift, s.species,
        )
        self.results["energy_z"] = energy_z
        self.results["forces_z"] = forces_z

    def _single_results(self, p, s: StructureArrays, periodic: bool) -> None:
        n = s.n_atoms
        pot = self.potential
        energy = float(p.energy[0]) + composition_energy(pot.energy_shift, s.species)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": np.asarray(p.energies[:n], np.float64) + pot.energy_shift[s.species],
            "forces": np.asarray(p.forces[:n], np.float64),
        }
        if periodic:
            sigma = stress_from_virial(p.virial[0], s.cell)
            self.results["stress"] = full_3x3_to_voigt_6_stress(sigma)

    def _committee_results(self, p, s: StructureArrays, periodic: bool) -> dict[str, Any]:
        """Means, calibrated σ and (if asked) members' values of a committee's predictions."""
        pot = self.potential
        rows = slice(0, s.n_atoms)
        each = member_results(p, 0, rows, s, pot.energy_shift, pot.members, True, periodic)
        shared = shared_results(p, 0, rows, s, True, periodic)
        r = committee_results(each, pot.calibration, self.members, *shared)
        out: dict[str, Any] = {
            "energy": r.energy,
            "free_energy": r.energy,
            "energies": r.energies,
            "forces": r.forces,
            "energy_std": r.energy_std,
            "energies_std": r.energies_std,
        }
        if r.forces_std is not None:
            out["forces_std"] = r.forces_std
        if self.members:
            out["energy_members"] = each.energy
            if each.forces is not None:
                out["forces_members"] = each.forces
        if periodic:
            out["stress"] = full_3x3_to_voigt_6_stress(r.stress)
            if r.stress_std is not None:
                out["stress_std"] = full_3x3_to_voigt_6_stress(r.stress_std)
            if self.members and each.stress is not None:
                out["stress_members"] = np.stack(
                    [full_3x3_to_voigt_6_stress(x) for x in each.stress]
                )
        return out

    def _check_guard(self, step: int) -> None:
        if self.guard is None:
            return
        per_atom = atom_force_std(self.results["forces_std"])
        if per_atom.size == 0:
            return
        atom = int(np.argmax(per_atom))
        value = float(per_atom[atom])
        if value <= self.guard.max_force_std:
            return
        if self.guard.action == "stop":
            raise UncertaintyError(step, atom, value, self.guard.max_force_std, "ASE calculator, ")
        self.guard_events.append(GuardEvent(step, atom, value))

    # ---------------------------------------------------------------- internals

    def _compute(self, s: StructureArrays, stress: bool):
        pot = self.potential
        st = self._state
        if st is None or st.n_atoms != s.n_atoms or st.pbc != s.pbc:
            origin = s.positions.mean(axis=0) if s.n_atoms else np.zeros(3)
            st = self._allocate(s, origin)
        n_pad = atom_slots(s.n_atoms)
        dt = np.dtype(pot.dtype)
        pos = np.zeros((n_pad, 3))
        pos[: s.n_atoms] = s.positions - st.origin
        species = np.full(n_pad, -1, np.int32)
        species[: s.n_atoms] = s.species
        with precision(pot.dtype):
            params, scale = pot.device_constants()
            committee = pot.stacked  # a shallow ensemble's heads give the member axis
            each = self.forces_std
            fn = pot.compiled.get(
                ("calculator", stress, each),
                lambda: jax.jit(
                    functools.partial(
                        calculator_step, pot.energy_model, stress, committee,
                        member_forces=each, dipole=pot.dipole_target,
                    )
                ),
            )
            args = (jnp.asarray(species), jnp.asarray(pos, dt), jnp.asarray(s.cell, dt))

            def run(neighbors):
                self.shapes.add(
                    (n_pad, int(neighbors.senders.shape[0]), neighbors.capacity, stress)
                )
                predictions, updated = fn(params, scale, *args, neighbors)
                return jax.device_get(predictions), updated

            def regrow(neighbors, result, code):
                return self._allocate(s, st.origin, at=pos).neighbors

            (predictions, neighbors), _ = graph.fit(
                run, st.neighbors, regrow, error=lambda out: out[1].error,
                what="neighbour list of the ASE calculator",
            )
        if graph.error_bits(neighbors.error) & int(INPUT):
            self._past_builds += int(self._state.neighbors.builds)
            self._state = None  # nothing kept from an invalid structure
            self._raise_input_error(neighbors, s, pos)
        self._state = dataclasses.replace(self._state, neighbors=neighbors)
        return predictions

    def _allocate(self, s: StructureArrays, origin, at: np.ndarray | None = None) -> _State:
        """A list fitted to this geometry (new atom count or periodicity, or an overflow)."""
        self.allocations += 1
        n_pad = atom_slots(s.n_atoms)
        if at is None:
            at = np.zeros((n_pad, 3))
            at[: s.n_atoms] = s.positions - origin
        mask = np.arange(n_pad) < s.n_atoms
        dt = np.dtype(self.potential.dtype)
        with precision(self.potential.dtype):
            neighbors = graph.allocate_skin(
                jnp.asarray(at, dt), self.potential.cutoff,
                cell=s.cell if any(s.pbc) else None, pbc=s.pbc, mask=mask, skin=self.skin,
            )
        if self._state is not None:  # the new list counts its own builds
            self._past_builds += int(self._state.neighbors.builds)
        self._state = _State(s.n_atoms, s.pbc, origin, neighbors)
        return self._state

    def _raise_input_error(self, neighbors: graph.SkinList, s: StructureArrays, pos) -> None:
        from ase.data import chemical_symbols

        code = graph.error_bits(neighbors.error)
        if code & graph.GraphError.COINCIDENT:
            full = neighbors.full_graph(np.asarray(pos), s.cell)
            pairs = [p for p in graph.coincident_pairs(full) if max(p[:2]) < s.n_atoms]
            if pairs:
                i, j, d = pairs[0]
                z = s.numbers
                raise ValueError(
                    f"atoms {i} ({chemical_symbols[z[i]]}) and {j} ({chemical_symbols[z[j]]}) "
                    f"are {d:.2g} Å apart: atoms at the same position are an input error "
                    f"(closer than {graph.MIN_DISTANCE} Å)"
                )
        raise ValueError(f"invalid structure: {graph.describe(code)}")


__all__ = ["DEFAULT_SKIN", "JATCalculator", "calculator_step"]
