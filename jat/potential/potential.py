"""``jat.Potential``: a model, its parameters, its species and energy reference, ready to evaluate.

Energy E = Σ_i (s_Z y_i + μ_Z) over real atoms, where y_i are the network's per-atom outputs and
μ_Z, s_Z the per-species shift and scale (eV). Forces F = −∂E/∂r (eV/Å); stress
σ = (1/V) ∂E/∂ε (eV/Å³) for fully periodic cells (:mod:`jat.predictor`). The neighbour list is
built inside the same compiled function as the model (indices outside the differentiation, edge
vectors inside it); its static bounds are grown on the host whenever the compiled code reports an
overflow (:func:`jat.graph.fit`). The composition term Σ_i μ_Z is summed in float64 on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from jat import graph
from jat.atomic_io import recover
from jat.dtypes import cast, check_dtype, precision
from jat.graph.errors import INPUT
from jat.graph.geometry import reduce_positions
from jat.models import MODELS, ZBL, EnergyModel
from jat.models.repulsion import make_repulsion
from jat.potential import files
from jat.potential.compiled import CompiledCache
from jat.potential.inputs import SpeciesTable, StructureArrays, atom_slots, structure_arrays
from jat.potential.results import (
    MemberResults,
    Results,
    committee_results,
    member_results,
    shared_results,
    with_z_scores,
)
from jat.predictor import composition_energy, predict_any, stress_from_virial
from jat.properties import HEAD, Target, property_channels, property_values
from jat.uncertainty import Calibration, LabelStatistics


@dataclasses.dataclass(frozen=True, eq=False)
class Potential:
    """A trained (or freshly initialised) interatomic potential: an immutable value.

    Attributes:
        module: the Flax module mapping a graph to per-atom outputs.
        params: its parameters (a pytree).
        species: element symbols; species index k is ``species[k]``.
        cutoff: neighbour cutoff r_c in Å.
        energy_shift: (S,) per-species shift μ_Z in eV ((K, S) for a committee whose members
            have their own).
        energy_scale: (S,) per-species scale s_Z in eV ((K, S) likewise).
        dtype: "float32" (default) or "float64"; float64 is enabled only inside this object's
            calls (``jax.enable_x64`` as a context), never globally.
        model: a name in :data:`jat.models.MODELS` ("jat", "schnet", "bessel", "painn") or
            "custom"; with ``model_kwargs`` it rebuilds the module on load.
        repulsion: None, or a fixed short-range pair term (:class:`jat.models.ZBL`) added to
            the network's energy everywhere the potential is evaluated or trained.
        members: None for one parameter set; K for a committee. A deep committee's every
            parameter leaf has a leading axis K (:meth:`committee`); a shallow ensemble is one
            parameter set whose module has K readout heads (``readout_heads`` = K, see
            :attr:`ensemble`). Its predictions are the members' mean, its uncertainty their
            standard deviation (:mod:`jat.uncertainty`).
        calibration: factors applied to a committee's σ (:class:`jat.uncertainty.Calibration`).
        label_statistics: the training labels' mean and standard deviation
            (:class:`jat.uncertainty.LabelStatistics`, set by training), for the z-scores in
            the results; None: no z-scores.
        properties: property targets (:class:`jat.properties.Target`, set by training with
            ``loss.properties``): every evaluation also gives their values
            (``Results.properties``, ``Results.dipole``).
        compiled: the cache of compiled functions, device constants and neighbour-list bounds
            (:class:`jat.potential.compiled.CompiledCache`); every copy starts with an empty one.
    """

    module: nn.Module
    params: Any
    species: tuple[str, ...]
    cutoff: float
    energy_shift: np.ndarray
    energy_scale: np.ndarray
    dtype: str = "float32"
    model: str = "custom"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    repulsion: ZBL | None = None
    members: int | None = None
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    label_statistics: LabelStatistics | None = None
    properties: tuple[Target, ...] = ()
    compiled: CompiledCache = dataclasses.field(
        default_factory=CompiledCache, init=False, repr=False, compare=False
    )

    def __post_init__(self):
        heads = self.energy_model.heads
        if heads > 1 and self.members != heads:
            raise ValueError(
                f"the module has {heads} readout heads (a shallow ensemble) but members is "
                f"{self.members!r}; a shallow ensemble has members = readout_heads"
            )
        channels = int(getattr(self.module, "property_outputs", 0))
        if property_channels(self.properties) > channels:
            raise ValueError(
                f"the property targets read {property_channels(self.properties)} channel(s) "
                f"but the module has property_outputs={channels}"
            )
        if any(t.channel == HEAD for t in self.properties) and not getattr(
            self.module, "dipole_head", False
        ):
            raise ValueError("a dipole target reads the dipole head, which the module lacks")

    # ---------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        model: str | nn.Module,
        species: Sequence[str],
        cutoff: float,
        seed: int = 0,
        dtype: str = "float32",
        repulsion: str | Mapping[str, Any] | ZBL | None = None,
        members: int | None = None,
        ensemble: str = "deep",
        **model_kwargs: Any,
    ) -> Potential:
        """Build a potential with freshly initialised parameters.

        Args:
            model: a name in :data:`jat.models.MODELS` ("jat", "schnet", "bessel", "painn"), or
                a Flax module with the models' call signature (then ``model_kwargs`` must be
                empty).
            species: element symbols, e.g. ``["H", "C", "N", "O"]``.
            cutoff: r_c in Å (positive, finite).
            seed: PRNG seed for the initial parameters (an integer >= 0).
            dtype: "float32" or "float64".
            repulsion: None (default), "zbl", or ``{"kind": "zbl", "radius_scale": 0.8,
                "radii": [[...]]}``: a ZBL pair repulsion switched off at the given (S, S)
                radii in Å, or at radius_scale × the sum of covalent radii where a radius is
                None/NaN or none are given (see :mod:`jat.models.repulsion`), for long MD.
            members: None for one parameter set, or K >= 2 for a committee of K members
                initialised independently (from keys folded from ``seed``).
            ensemble: with ``members``: "deep" (K parameter sets) or "shallow" (one shared
                representation with K readout heads: the model's ``readout_heads`` = K).
            **model_kwargs: hyperparameters of the named model (see ``jat.models``), checked
                (``jat.models.HyperparameterError`` names a bad one).
        """
        species = check_species(species)
        dtype = check_dtype(dtype)
        cutoff = check_cutoff(cutoff)
        members = check_members(members)
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be 'deep' or 'shallow', got {ensemble!r}")
        if "readout_heads" in model_kwargs:
            raise ValueError(
                "readout_heads is set by members=K with ensemble='shallow', not directly"
            )
        shallow = ensemble == "shallow" and members is not None
        if shallow and isinstance(model, str):
            model_kwargs = {**model_kwargs, "readout_heads": members}
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        module, name, kwargs = _module(model, len(species), cutoff, model_kwargs)
        if shallow and getattr(module, "readout_heads", 1) != members:
            raise ValueError(
                f"a shallow ensemble of {members} needs a module with readout_heads={members}, "
                f"got {type(module).__name__} with {getattr(module, 'readout_heads', 1)}"
            )
        params = init_params(module, int(seed), dtype, None if shallow else members)
        n = len(species)
        return cls(
            module=module,
            params=params,
            species=species,
            cutoff=cutoff,
            energy_shift=np.zeros(n),
            energy_scale=np.ones(n),
            dtype=dtype,
            model=name,
            model_kwargs=kwargs,
            repulsion=make_repulsion(repulsion, species, cutoff),
            members=members,
        )

    @classmethod
    def committee(
        cls, potentials: Sequence[Potential], calibration: Calibration | None = None
    ) -> Potential:
        """One committee of K >= 2 potentials of the same model (same module, species, cutoff,
        dtype and repulsion), e.g. separately trained runs or k-fold models.

        Members that are committees themselves contribute each of their members. Energy
        shifts and scales may differ between members (then they are kept per member). Shallow
        ensembles cannot be combined (their heads share one representation).
        """
        singles: list[Potential] = []
        for k, p in enumerate(potentials):
            if not isinstance(p, Potential):
                raise TypeError(f"committee member {k} is {type(p).__name__}, not a Potential")
            if p.ensemble == "shallow":
                raise ValueError(
                    f"committee member {k} is a shallow ensemble ({p.members} heads on one "
                    "representation): a committee of shallow ensembles is not supported"
                )
            singles.extend(p.member(m) for m in range(p.n_members))
        if len(singles) < 2:
            raise ValueError(f"a committee needs at least 2 members, got {len(singles)}")
        first = singles[0]
        for k, p in enumerate(singles[1:], start=1):
            for field in ("model", "species", "cutoff", "dtype", "repulsion"):
                if getattr(p, field) != getattr(first, field):
                    raise ValueError(
                        f"committee member {k} differs from member 0 in {field}: "
                        f"{getattr(p, field)!r} vs {getattr(first, field)!r}"
                    )
            if dict(p.model_kwargs) != dict(first.model_kwargs) or p.module != first.module:
                raise ValueError(f"committee member {k} has other hyperparameters than member 0")
            leaves, first_leaves = jax.tree.leaves(p.params), jax.tree.leaves(first.params)
            if jax.tree.structure(p.params) != jax.tree.structure(first.params) or any(
                np.shape(a) != np.shape(b) for a, b in zip(leaves, first_leaves, strict=True)
            ):
                raise ValueError(f"committee member {k}'s parameters differ in shape")
        with precision(first.dtype):
            params = jax.tree.map(lambda *x: jnp.stack(x), *[p.params for p in singles])
        return cls(
            module=first.module,
            params=params,
            species=first.species,
            cutoff=first.cutoff,
            energy_shift=_rows([p.energy_shift for p in singles]),
            energy_scale=_rows([p.energy_scale for p in singles]),
            dtype=first.dtype,
            model=first.model,
            model_kwargs=first.model_kwargs,
            repulsion=first.repulsion,
            members=len(singles),
            calibration=Calibration() if calibration is None else calibration,
            label_statistics=first.label_statistics,
            properties=first.properties,  # member 0's normalisation of the targets
        )

    @property
    def n_members(self) -> int:
        """The number of members: K for a committee (deep or shallow), else 1."""
        return self.members or 1

    @property
    def ensemble(self) -> str | None:
        """None for a single potential; "deep" for K parameter sets; "shallow" for one
        parameter set with K readout heads."""
        if not self.members:
            return None
        return "shallow" if self.energy_model.heads > 1 else "deep"

    @property
    def stacked(self) -> bool:
        """Whether every parameter leaf has a leading member axis (a deep committee)."""
        return self.ensemble == "deep"

    def member(self, k: int) -> Potential:
        """Member ``k`` of a deep committee as a single potential (k = 0 of a single one:
        itself). A shallow ensemble's heads share one representation and are not potentials
        of their own (ValueError): ``compute(..., members=True)`` gives each head's values."""
        if not self.members:
            if k != 0:
                raise IndexError(f"a single potential has only member 0, not {k}")
            return self
        if self.ensemble == "shallow":
            raise ValueError(
                f"member {k!r} of a shallow ensemble is not a potential of its own (its "
                f"{self.members} heads share one representation); compute(..., members=True) "
                "gives every head's values"
            )
        if not (isinstance(k, (int, np.integer)) and 0 <= k < self.members):
            raise IndexError(f"member {k!r} out of range for a committee of {self.members}")

        def row(arr):
            arr = np.asarray(arr)
            return arr[k] if arr.ndim == 2 else arr

        return dataclasses.replace(
            self,
            params=jax.tree.map(lambda x: x[k], self.params),
            energy_shift=row(self.energy_shift),
            energy_scale=row(self.energy_scale),
            members=None,
            calibration=Calibration(),
        )  # the label statistics stay: they belong to the training data

    def with_label_statistics(self, statistics: LabelStatistics | None) -> Potential:
        """A copy whose results carry z-scores against ``statistics`` (None: none)."""
        if statistics is not None and not isinstance(statistics, LabelStatistics):
            raise TypeError(f"expected jat.uncertainty.LabelStatistics, got {type(statistics)}")
        return dataclasses.replace(self, label_statistics=statistics)

    def with_properties(self, targets: Sequence[Target]) -> Potential:
        """A copy whose evaluations also give the values of ``targets``
        (:class:`jat.properties.Target`, reading the module's property channels)."""
        targets = tuple(targets)
        if not all(isinstance(t, Target) for t in targets):
            raise TypeError("expected jat.properties.Target values")
        return dataclasses.replace(self, properties=targets)

    @property
    def dipole_target(self) -> Target | None:
        """The first dipole target, or None."""
        return next((t for t in self.properties if t.kind == "dipole"), None)

    def with_calibration(self, calibration: Calibration) -> Potential:
        """A copy whose σ are multiplied by ``calibration``'s factors (a committee's only)."""
        if not isinstance(calibration, Calibration):
            raise TypeError(f"expected a jat.uncertainty.Calibration, got {type(calibration)}")
        if not self.members:
            raise ValueError("only a committee (members >= 2) has a σ to calibrate")
        return dataclasses.replace(self, calibration=calibration)

    @property
    def energy_model(self) -> EnergyModel:
        """The network and the repulsion as one per-atom energy function of a graph."""
        return EnergyModel(self.module, self.repulsion)

    @property
    def species_table(self) -> SpeciesTable:
        """Atomic number → species index (cached)."""
        return self.compiled.get("species_table", lambda: SpeciesTable(self.species))

    def with_energy_reference(
        self, shift: Sequence[float] | None = None, scale: Sequence[float] | None = None
    ) -> Potential:
        """A copy with new per-species energy shift μ_Z and/or scale s_Z (eV), in species order."""
        n = len(self.species)
        rows = self.members if self.stacked else None
        new_shift = self.energy_shift if shift is None else _vector(shift, n, "shift", rows)
        new_scale = self.energy_scale if scale is None else _vector(scale, n, "scale", rows)
        return dataclasses.replace(self, energy_shift=new_shift, energy_scale=new_scale)

    def with_repulsion(self, repulsion: str | Mapping[str, Any] | ZBL | None) -> Potential:
        """A copy with another short-range repulsion (see :meth:`create`), or none.

        Parameters are kept, so this is sound only where the new term vanishes on the training
        data (the data-radii term does, by construction); otherwise retrain with it
        (``model.repulsion`` in the config).
        """
        return dataclasses.replace(
            self, repulsion=make_repulsion(repulsion, self.species, self.cutoff)
        )

    def with_params(self, params: Any) -> Potential:
        """A copy holding ``params`` (same structure as ``self.params``)."""
        return dataclasses.replace(self, params=params)

    def with_dtype(self, dtype: str) -> Potential:
        """A copy evaluated in ``dtype`` ("float32" or "float64"), its parameters cast to it.

        Returns ``self`` when the dtype is already ``dtype``. Casting float32 parameters to
        float64 is exact; the other way rounds them. The copy is cached, so repeated calls share
        its compiled functions.
        """
        dtype = check_dtype(dtype)
        if dtype == self.dtype:
            return self

        def make():
            with precision(dtype):
                return dataclasses.replace(self, params=cast(self.params, dtype), dtype=dtype)

        return self.compiled.get(("with_dtype", dtype), make)

    def device_constants(self) -> tuple[Any, jax.Array]:
        """(params, scale) as device arrays of the potential's dtype (cached; call inside
        ``jat.dtypes.precision(self.dtype)``)."""

        def make():
            return cast(self.params, self.dtype), jnp.asarray(
                self.energy_scale, jnp.dtype(self.dtype)
            )

        return self.compiled.get(("constants",), make)

    # ---------------------------------------------------------------- evaluation

    def compute(
        self,
        atoms: Any = None,
        *,
        positions: Any = None,
        numbers: Any = None,
        symbols: Sequence[str] | None = None,
        cell: Any = None,
        pbc: Any = None,
        forces: bool = True,
        stress: bool | None = None,
        members: bool = False,
        calibrated: bool = True,
        forces_std: bool = True,
    ) -> Results:
        """Energy, per-atom energies, forces and stress of one structure.

        Pass an ASE ``Atoms`` or arrays: ``positions`` (N, 3) Å with ``numbers`` (atomic
        numbers) or ``symbols``, and optionally ``cell`` (3, 3) Å (rows are lattice vectors) and
        ``pbc``. ``stress`` defaults to True for fully periodic structures. Every call checks its
        input (finite positions, known elements, a valid cell along periodic axes, no two atoms
        at one position) and raises ValueError naming the problem.

        For a committee the results are the members' means with their σ (``energy_std``, …;
        calibrated unless ``calibrated=False``), and ``members=True`` adds every member's values.
        ``forces_std=False``: forces and stress are the members' mean without σ (energy σ
        stays); for a shallow ensemble that is one backward pass instead of K (about one
        model's cost).
        """
        s = structure_arrays(
            self.species_table, atoms, positions=positions, numbers=numbers, symbols=symbols,
            cell=cell, pbc=pbc,
        )
        return self._evaluate([s], forces, stress, pad=False, members=members,
                              calibrated=calibrated, forces_std=forces_std)[0]

    def compute_batch(
        self,
        structures: Sequence[Any],
        *,
        forces: bool = True,
        stress: bool | None = None,
        members: bool = False,
        calibrated: bool = True,
        forces_std: bool = True,
    ) -> list[Results]:
        """Evaluate several ASE ``Atoms`` in one compiled call over a padded batch.

        The batch is one disjoint graph (neighbour lists built per structure, under ``vmap``).
        All structures must share their ``pbc``. Atoms are padded to a multiple of 8 per batch.
        ``members``, ``calibrated`` and ``forces_std`` as in :meth:`compute`.
        """
        ss = []
        for k, atoms in enumerate(structures):
            try:
                ss.append(structure_arrays(self.species_table, atoms))
            except ValueError as err:
                raise ValueError(f"structure {k}: {err}") from None
        if not ss:
            return []
        for k, s in enumerate(ss):
            if s.pbc != ss[0].pbc:
                raise ValueError(
                    f"structure {k} has pbc {s.pbc} but structure 0 has {ss[0].pbc}; "
                    "batch structures with the same periodicity together"
                )
        return self._evaluate(ss, forces, stress, pad=True, members=members,
                              calibrated=calibrated, forces_std=forces_std)

    def energy(self, atoms: Any) -> float:
        """Total energy (eV) of an ASE ``Atoms``."""
        return self.compute(atoms, forces=False, stress=False).energy

    def forces(self, atoms: Any) -> np.ndarray:
        """Forces (N, 3) eV/Å of an ASE ``Atoms``."""
        return self.compute(atoms, stress=False).forces

    def stress(self, atoms: Any) -> np.ndarray:
        """Stress (3, 3) eV/Å³ of a fully periodic ASE ``Atoms``."""
        return self.compute(atoms, forces=False, stress=True).stress

    def graph(self, atoms: Any) -> graph.Graph:
        """The :class:`jat.graph.Graph` of one ASE ``Atoms`` (neighbour list at the potential's
        cutoff, positions in the potential's dtype), for calling :func:`jat.predictor.predict`
        directly, e.g. in a benchmark."""
        s = structure_arrays(self.species_table, atoms)
        positions = reduce_positions(s.positions, s.cell, s.pbc)
        nbrs = graph.neighbor_list(
            positions, self.cutoff, cell=s.cell if any(s.pbc) else None, pbc=s.pbc
        )
        with precision(self.dtype):
            dt = jnp.dtype(self.dtype)
            return graph.single_graph(
                s.species, jnp.asarray(positions, dt), jnp.asarray(s.cell, dt), nbrs
            )

    def calculator(self, **kwargs: Any):
        """An ASE calculator (energy, free_energy, energies, forces, stress; for a committee
        also their σ) for this potential.

        Keyword arguments go to :class:`jat.simulation.ase_calculator.JATCalculator`: ``skin``
        (Å, default :data:`jat.graph.DEFAULT_SKIN`: the neighbour list is reused until an atom
        moved more than skin/2), ``dtype`` ("float64" evaluates a float64 copy), ``guard``
        (stop or flag MD when the force σ passes a threshold) and ``members``.
        """
        from jat.simulation.ase_calculator import JATCalculator

        return JATCalculator(self, **kwargs)

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``metadata.json`` (versioned, human-readable) and ``params.msgpack`` (no pickle).

        The directory is written beside the target and swapped in at the end, so an existing
        potential at ``directory`` is only replaced once the new one is complete. A target that
        is a file, a training run directory, or a directory holding anything but a saved
        potential is refused (FileExistsError) unless ``overwrite=True``.
        """
        return files.save(self, directory, _jat_version(), overwrite=overwrite)

    def write_files(self, directory: str | os.PathLike) -> None:
        """Write the potential's two files into an existing ``directory`` (not atomic; see
        :meth:`save`). Used by checkpoints that add files of their own beside them."""
        files.write_files(self, directory, _jat_version())

    @classmethod
    def load(cls, directory: str | os.PathLike, module: nn.Module | None = None) -> Potential:
        """Load a potential written by :meth:`save`, or the best model of a training run when
        ``directory`` is a run directory of ``python -m jat.train`` (it loads ``<run>/best``).

        ``module`` is required only for potentials built from a custom Flax module. The files
        are checked as untrusted input: a malformed one raises
        :class:`jat.potential.files.PotentialFileError` naming the file and the field.
        """
        directory = Path(directory)
        recover(directory)
        best = directory / "best"
        if not (directory / files.METADATA_FILE).exists():
            recover(best)
            if (best / files.METADATA_FILE).exists():
                directory = best
        meta = files.read_metadata(directory, MODELS)
        where = f"{meta.path}: entry"
        if meta.model == "custom":
            if module is None:
                raise ValueError(
                    f"{meta.path}: saved from a custom module ({meta.module_class}); "
                    "pass module=... to Potential.load"
                )
            net, name, kwargs = _module(module, len(meta.species), meta.cutoff, {})
        else:
            try:
                net, name, kwargs = _module(
                    meta.model, len(meta.species), meta.cutoff, meta.model_kwargs
                )
            except (TypeError, ValueError) as err:
                raise files.PotentialFileError(f"{where} 'model_kwargs': {err}") from None
        try:
            repulsion = make_repulsion(meta.repulsion, meta.species, meta.cutoff)
        except (TypeError, ValueError) as err:
            raise files.PotentialFileError(f"{where} 'repulsion': {err}") from None
        try:
            calibration = Calibration.from_dict(meta.calibration or {})
        except (TypeError, ValueError) as err:
            raise files.PotentialFileError(f"{where} 'calibration': {err}") from None
        try:
            targets = tuple(Target.from_dict(t) for t in meta.properties or ())
        except (KeyError, TypeError, ValueError) as err:
            raise files.PotentialFileError(f"{where} 'properties': {err}") from None
        try:
            stats = None
            if meta.label_statistics is not None:
                stats = LabelStatistics.from_dict(meta.label_statistics)
        except (TypeError, ValueError) as err:
            raise files.PotentialFileError(f"{where} 'label_statistics': {err}") from None
        heads = getattr(net, "readout_heads", 1)
        kind = meta.ensemble or ("deep" if meta.members else None)
        if (kind == "shallow") != (heads > 1) or (heads > 1 and heads != meta.members):
            raise files.PotentialFileError(
                f"{where} 'ensemble': {kind!r} with members {meta.members} does not match the "
                f"model's readout_heads {heads}"
            )
        stacked = meta.members if kind == "deep" else None
        template = jax.eval_shape(lambda: init_params(net, 0, "float32", stacked))
        raw = files.read_params(directory, template)
        with precision(meta.dtype):
            params = cast(raw, meta.dtype)
        return cls(
            module=net,
            params=params,
            species=meta.species,
            cutoff=meta.cutoff,
            energy_shift=meta.energy_shift,
            energy_scale=meta.energy_scale,
            dtype=meta.dtype,
            model=name,
            model_kwargs=kwargs,
            repulsion=repulsion,
            members=meta.members,
            calibration=calibration,
            label_statistics=stats,
            properties=targets,
        )

    # ---------------------------------------------------------------- internals

    def _evaluate(
        self,
        ss: list[StructureArrays],
        forces: bool,
        stress: bool | None,
        pad: bool,
        members: bool = False,
        calibrated: bool = True,
        forces_std: bool = True,
    ) -> list[Results]:
        """Results of structures sharing one pbc; ``stress=None`` means "if fully periodic"."""
        each = bool(forces_std) or not self.members  # per-member forces and stress
        pbc = ss[0].pbc
        periodic = all(pbc)
        want_stress = periodic if stress is None else bool(stress)
        if want_stress and not periodic:
            raise ValueError("stress needs a fully periodic structure (pbc = True on all axes)")
        longest = max(s.n_atoms for s in ss)
        n = atom_slots(longest) if pad else max(longest, 1)  # an empty structure: one slot
        dt = np.dtype(self.dtype)
        pos = np.zeros((len(ss), n, 3))
        species = np.full((len(ss), n), -1, np.int32)
        for k, s in enumerate(ss):
            pos[k, : s.n_atoms] = reduce_positions(s.positions, s.cell, pbc)
            species[k, : s.n_atoms] = s.species
        cell = np.stack([s.cell for s in ss])
        spec_key = ("spec", pos.shape, pbc)

        def allocate(*_, estimate: bool = False):
            """Bounds for the batch: estimated from the density at first (no host count of
            the edges), counted exactly when that did not fit."""
            mask = species >= 0
            return graph.allocate(
                pos, self.cutoff, cell if any(pbc) else None, pbc, mask, estimate=estimate
            )

        with precision(self.dtype):
            params, scale = self.device_constants()
            args = (pos.astype(dt), species, cell.astype(dt))
            out, spec = graph.fit(
                lambda spec: self._compiled(spec, forces, want_stress, each)(
                    params, scale, *args
                ),
                self.compiled.peek(spec_key) or allocate(estimate=True),
                allocate,
                error=lambda out: out[2].error,
                what="neighbour list",
            )
            self.compiled.put(spec_key, spec)
            predictions, nbrs = jax.device_get(out[0]), out[2]  # the lists stay on the device
            values = jax.device_get(out[1])
        if graph.error_bits(nbrs.error) & int(INPUT):
            _raise_input_errors(jax.device_get(nbrs), species, pos, cell, pbc, ss)
        if not self.members:
            out = [
                self._results(predictions, s, k, n, forces, want_stress)
                for k, s in enumerate(ss)
            ]
        else:
            out = [
                self._committee_results(
                    predictions, s, k, n, forces, want_stress, members, calibrated
                )
                for k, s in enumerate(ss)
            ]
        if self.properties:
            out = [self._with_properties(r, values, s, k, n) for k, (r, s) in
                   enumerate(zip(out, ss, strict=True))]
        if self.label_statistics is None:
            return out
        return [
            with_z_scores(r, self.label_statistics, self.energy_shift, s.species)
            for r, s in zip(out, ss, strict=True)
        ]

    def _compiled(
        self, spec: graph.NeighborSpec, forces: bool, stress: bool, member_forces: bool = True
    ):
        def make():
            f = functools.partial(
                evaluate_batch, self.energy_model, spec, forces, stress, self.stacked,
                member_forces=member_forces, targets=self.properties,
            )
            return jax.jit(f)

        return self.compiled.get(("evaluate", spec, forces, stress, member_forces), make)

    def _with_properties(self, r: Results, values, s: StructureArrays, k: int, n: int):
        """``r`` with the property targets' values of structure ``k`` (atom slots k·n …),
        references added in float64 (the members' mean for a committee)."""
        rows = slice(k * n, k * n + s.n_atoms)
        members = bool(self.members)
        out, dipole = {}, None
        for t in self.properties:
            v = np.asarray(values[t.key], np.float64)
            v = v.mean(axis=0) if members else v
            if t.kind == "atomic":
                out[t.key] = v[rows] + t.reference(s.species)
            elif t.kind == "dipole":
                vec = v[k]
                out[t.key] = float(np.linalg.norm(vec))
                if dipole is None:
                    dipole = vec
            else:
                out[t.key] = float(v[k]) + t.reference(s.species)
        return dataclasses.replace(r, properties=out, dipole=dipole)

    def _results(self, p, s: StructureArrays, k: int, n: int, forces: bool, stress: bool):
        rows = slice(k * n, k * n + s.n_atoms)
        shift = self.energy_shift[s.species]
        energies = np.asarray(p.energies[rows], np.float64) + shift
        energy = float(p.energy[k]) + composition_energy(self.energy_shift, s.species)
        f = np.asarray(p.forces[rows], np.float64) if forces else None
        sigma = stress_from_virial(p.virial[k], s.cell) if stress else None
        return Results(energy=energy, energies=energies, forces=f, stress=sigma)

    def _committee_results(
        self, p, s: StructureArrays, k: int, n: int, forces: bool, stress: bool,
        members: bool, calibrated: bool,
    ) -> Results:
        rows = slice(k * n, k * n + s.n_atoms)
        each = member_results(p, k, rows, s, self.energy_shift, self.members, forces, stress)
        mean_forces, mean_stress = shared_results(p, k, rows, s, forces, stress)
        cal = self.calibration if calibrated else Calibration()
        return committee_results(each, cal, members, mean_forces, mean_stress)


# ---------------------------------------------------------------------------------------------
# the compiled evaluation of a padded batch


def evaluate_batch(
    model, spec, forces, stress, committee, params, scale, positions, species, cell,
    member_forces=True, targets=(),
):
    """Predictions, property values (of ``targets``, without their references; see
    :func:`jat.properties.property_values`) and neighbour lists of a padded batch (B
    structures of n atom slots):
    positions (B, n, 3) Å, species (B, n) (−1 = padding), cell (B, 3, 3). The lists are built
    inside, one per structure (vmapped), and the batch evaluated as one disjoint graph (by every
    member of a ``committee``, or by a shallow ensemble's heads: a leading member axis on the
    predictions)."""
    periodic = any(spec.pbc)
    nbrs = jax.vmap(graph.build, in_axes=(0, 0 if periodic else None, 0, None))(
        positions, cell if periodic else None, species >= 0, spec
    )
    g = graph.batch_graph(
        species, positions, cell, nbrs.senders, nbrs.receivers, nbrs.shifts, nbrs.mask
    )
    predictions = predict_any(
        model, params, scale, g, committee=committee, forces=forces, stress=stress,
        member_forces=member_forces,
    )
    members = committee or model.heads > 1
    values = property_values(targets, predictions.extras, g, members=members)
    return predictions, values, nbrs


def _raise_input_errors(nbrs, species, positions, cell, pbc, ss) -> None:
    """ValueError naming the atoms when a structure's neighbour search found two of them at one
    position (or another input error)."""
    for k in range(len(ss)):
        code = graph.error_bits(nbrs.error[k])
        if not code & int(INPUT):
            continue
        prefix = f"structure {k}: " if len(ss) > 1 else ""
        if code & graph.GraphError.COINCIDENT:
            one = graph.single_graph(
                species[k], positions[k], cell[k],
                jax.tree.map(lambda x, k=k: x[k], nbrs),
            )
            pairs = graph.coincident_pairs(one)
            i, j, d = pairs[0] if pairs else (-1, -1, 0.0)
            symbols = ss[k].numbers
            raise ValueError(
                f"{prefix}atoms {i} ({chemical_symbols[symbols[i]]}) and {j} "
                f"({chemical_symbols[symbols[j]]}) are {d:.2g} Å apart: atoms at the same "
                f"position are an input error (closer than {graph.MIN_DISTANCE} Å)"
                + (f"; {len(pairs)} such pairs" if len(pairs) > 1 else "")
            )
        raise ValueError(f"{prefix}invalid structure: {graph.describe(code)}")


# ---------------------------------------------------------------------------------------------
# helpers


def _module(model, num_species: int, cutoff: float, model_kwargs):
    """(module, model name, kwargs) for a model name or a Flax module."""
    if isinstance(model, str):
        name = model.lower()
        if name not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
        kwargs = dict(model_kwargs)
        try:
            module = MODELS[name](num_species=num_species, cutoff=float(cutoff), **kwargs)
        except TypeError as err:
            raise TypeError(f"model {name!r}: {err}") from None
        return module, name, kwargs
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError("model_kwargs are only accepted with a model name")
        return model, "custom", {}
    raise TypeError(f"model must be a name or a flax.linen.Module, got {type(model)}")


def init_params(module: nn.Module, seed: int, dtype: str, members: int | None = None):
    """Initialise parameters on a two-atom dummy graph, in float32 so that a seed gives the same
    parameters whatever the dtype, then cast to ``dtype``. With ``members`` K: K independent
    sets (keys folded from the seed's) stacked on a leading axis."""
    species = jnp.array([0, 0], jnp.int32)
    vec = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], jnp.float32)
    senders = jnp.array([1, 0], jnp.int32)
    receivers = jnp.array([0, 1], jnp.int32)
    mask = jnp.array([True, True])

    @jax.jit  # one compiled program: run op by op, a model's init compiled hundreds of them
    def init(key):
        return module.init(key, species, vec, senders, receivers, mask)

    key = jax.random.PRNGKey(seed)
    if members:
        keys = jnp.stack([jax.random.fold_in(key, k) for k in range(members)])
        params = jax.vmap(init)(keys)
    else:
        params = init(key)
    with precision(dtype):
        return cast(params, dtype)


ENSEMBLES = ("deep", "shallow")


def check_members(members: Any) -> int | None:
    """None (one parameter set) or a committee size K >= 2, as an int."""
    if members is None:
        return None
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)):
        raise ValueError(f"members must be None or an integer >= 2, got {members!r}")
    if not 2 <= int(members) <= files.MAX_MEMBERS:
        raise ValueError(
            f"members must be None or an integer from 2 to {files.MAX_MEMBERS}, got {members}"
        )
    return int(members)


def check_species(species: Sequence[str]) -> tuple[str, ...]:
    """Element symbols as a tuple; ValueError for unknown or repeated ones."""
    if isinstance(species, str):
        raise TypeError("species must be a list of element symbols, e.g. ['H', 'C', 'N', 'O']")
    out = tuple(str(s) for s in species)
    if not out:
        raise ValueError("species must not be empty")
    unknown = [s for s in out if s not in atomic_numbers or s == "X"]
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate species in {list(out)}")
    return out


def check_cutoff(cutoff: Any) -> float:
    """The cutoff as a float: positive and finite (Å)."""
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float, np.number)):
        raise ValueError(f"cutoff must be a number of Å, got {cutoff!r}")
    value = float(cutoff)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff!r}")
    return value


def _rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One (S,) row shared by all members when they agree, else their (K, S) stack."""
    arrays = [np.asarray(a, np.float64) for a in arrays]
    if all(np.array_equal(a, arrays[0]) for a in arrays):
        return arrays[0]
    return np.stack(arrays)


def _vector(
    values: Sequence[float], n: int, name: str, members: int | None = None
) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,) and not (members and arr.shape == (members, n)):
        allowed = f"({n},)" + (f" or ({members}, {n})" if members else "")
        raise ValueError(
            f"{name} must have one value per species, shape {allowed}, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr


def _jat_version() -> str:
    from jat import __version__

    return __version__


__all__ = [
    "MemberResults",
    "Potential",
    "Results",
    "check_cutoff",
    "check_members",
    "check_species",
    "evaluate_batch",
    "init_params",
]
