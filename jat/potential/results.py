"""What an evaluation returns: :class:`Results` (one structure, float64 on the host), with a
committee's σ and, on request, every member's values (:class:`MemberResults`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jat.potential.inputs import StructureArrays
from jat.predictor import composition_energy, stress_from_virial
from jat.uncertainty import Calibration, spread


@dataclasses.dataclass(frozen=True)
class MemberResults:
    """Every committee member's values for one structure (float64 numpy, K members).

    energy: (K,) eV; energies: (K, N) eV; forces: (K, N, 3) eV/Å or None; stress: (K, 3, 3)
    eV/Å³ or None.
    """

    energy: np.ndarray
    energies: np.ndarray
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Results:
    """Results for one structure (float64 numpy on the host).

    energy: total energy (eV); energies: (N,) per-atom energies (eV); forces: (N, 3) eV/Å or None;
    stress: (3, 3) eV/Å³ or None (only for fully periodic cells). For a committee these are the
    members' means, and ``energy_std`` (eV), ``energies_std`` (N,), ``forces_std`` (N, 3) and
    ``stress_std`` (3, 3) their standard deviations (σ, never a variance), multiplied by the
    potential's calibration factors unless computed with ``calibrated=False``; ``members``
    holds every member's values when asked for. For a single potential the σ are None.
    ``energy_z`` and ``forces_z`` (N,) are z-scores against the training labels (energy per
    atom less the composition reference; per-atom force magnitude), when the potential holds
    their statistics (:class:`jat.uncertainty.LabelStatistics`), else None. ``properties``:
    the potential's property targets by key, in their units (a float per structure, (N,) for
    an atomic target, |μ| in e·Å for a dipole; a committee's members' mean); ``dipole``:
    (3,) e·Å, the vector μ of a dipole target, else None.
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    energy_std: float | None = None
    energies_std: np.ndarray | None = None
    forces_std: np.ndarray | None = None
    stress_std: np.ndarray | None = None
    members: MemberResults | None = None
    energy_z: float | None = None
    forces_z: np.ndarray | None = None
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    dipole: np.ndarray | None = None


def member_results(
    p: Any,
    k: int,
    rows: slice,
    s: StructureArrays,
    energy_shift: np.ndarray,
    members: int,
    forces: bool,
    stress: bool,
) -> MemberResults:
    """Every member's values for structure ``k`` (atom slots ``rows``) of a committee's
    predictions ``p`` (leading member axis, on the host), in float64 with the energy shift
    μ_Z ((S,) shared or (K, S) per member) added. Forces and stress predicted as the members'
    mean only (``member_forces=False``) are left out here (see :func:`shared_results`)."""
    shift = np.asarray(energy_shift, np.float64)
    shift = np.broadcast_to(shift, (members, shift.shape[-1]))
    each_forces = forces and p.forces.ndim == 3
    each_stress = stress and p.virial.ndim == 4
    return MemberResults(
        energy=np.asarray(p.energy[:, k], np.float64) + composition_energy(shift, s.species),
        energies=np.asarray(p.energies[:, rows], np.float64) + shift[:, s.species],
        forces=np.asarray(p.forces[:, rows], np.float64) if each_forces else None,
        stress=np.stack([stress_from_virial(v[k], s.cell) for v in p.virial])
        if each_stress
        else None,
    )


def shared_results(p: Any, k: int, rows: slice, s: StructureArrays, forces: bool, stress: bool):
    """(forces (N, 3) or None, stress (3, 3) or None): the members' mean forces and stress of
    structure ``k`` where they were predicted without a member axis (``member_forces=False``)."""
    f = np.asarray(p.forces[rows], np.float64) if forces and p.forces.ndim == 2 else None
    st = stress_from_virial(p.virial[k], s.cell) if stress and p.virial.ndim == 3 else None
    return f, st


def with_z_scores(
    r: Results, stats: Any, energy_shift: np.ndarray, species: np.ndarray
) -> Results:
    """``r`` with z-scores against ``stats`` (a :class:`jat.uncertainty.LabelStatistics`):
    the energy per atom less Σ μ_Z (the members' mean shift for a committee) and each atom's
    force magnitude."""
    energy_z, forces_z = z_scores(stats, r.energy, r.forces, energy_shift, species)
    return dataclasses.replace(r, energy_z=energy_z, forces_z=forces_z)


def z_scores(
    stats: Any, energy: float, forces: np.ndarray | None, energy_shift: np.ndarray, species
) -> tuple[float | None, np.ndarray | None]:
    """(energy z, per-atom force z (N,)) of a prediction against ``stats``; see
    :func:`with_z_scores`."""
    species = np.asarray(species)
    shift = np.asarray(energy_shift, np.float64)
    shift = shift.mean(axis=0) if shift.ndim == 2 else shift
    n = len(species)
    energy_z = None
    if n:
        energy_z = float(stats.energy_z((energy - composition_energy(shift, species)) / n))
    return energy_z, None if forces is None else stats.force_z(forces)


def committee_results(
    each: MemberResults,
    calibration: Calibration,
    members: bool,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
) -> Results:
    """The members' means and their σ times ``calibration``'s factors (and the members'
    values if ``members``). ``forces`` and ``stress``: the members' mean where only that was
    predicted (no σ then)."""
    energy, energy_std = spread(each.energy)
    energies, energies_std = spread(each.energies)
    out: dict[str, Any] = {
        "energy": float(energy),
        "energies": energies,
        "energy_std": float(energy_std) * calibration.energy,
        "energies_std": energies_std * calibration.energy,
    }
    if each.forces is not None:
        mean, std = spread(each.forces)
        out.update(forces=mean, forces_std=std * calibration.forces)
    elif forces is not None:
        out["forces"] = forces
    if each.stress is not None:
        mean, std = spread(each.stress)
        out.update(stress=mean, stress_std=std * calibration.stress)
    elif stress is not None:
        out["stress"] = stress
    return Results(**out, members=each if members else None)


__all__ = [
    "MemberResults",
    "Results",
    "committee_results",
    "member_results",
    "shared_results",
    "with_z_scores",
    "z_scores",
]
