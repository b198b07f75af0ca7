"""``jat.Potential``: a model, its parameters, its species and energy reference, ready to evaluate.

Energy E = Σ_i (s_Z y_i + μ_Z) over real atoms, where y_i are the network's per-atom outputs and
μ_Z, s_Z the per-species shift and scale (eV). Forces F = −∂E/∂r (eV/Å); stress
σ = (1/V) ∂E/∂ε (eV/Å³) for fully periodic cells, the derivative taken with respect to a
symmetric strain applied to positions and cell. The neighbour list is built inside the same
compiled function as the model (indices outside the differentiation, edge vectors inside it), and
its static capacity is grown on the host whenever the compiled code reports an overflow.

The composition term Σ_i μ_Z, which can be large (ANI-1 atoms are ~−10³ eV), is summed in
float64 on the host; only the network term is computed in the potential's dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
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
from jat.atomic_io import atomic_directory, recover
from jat.models import MODELS, ZBL, EnergyModel
from jat.models.repulsion import make_repulsion

FORMAT = "jat.Potential"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
PARAMS_FILE = "params.msgpack"
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class Results:
    """Results for one structure (float64 numpy on the host).

    energy: total energy (eV); energies: (N,) per-atom energies (eV); forces: (N, 3) eV/Å or None;
    stress: (3, 3) eV/Å³ or None (only for fully periodic cells).
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _Structure:
    """One structure as arrays: positions (N, 3) Å, species indices (N,), cell (3, 3), pbc."""

    positions: np.ndarray
    species: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]


# ---------------------------------------------------------------------------------------------
# Pure, jittable evaluation


def _network_energy(model, params, scale, positions, species, cell, strain, nbrs):
    """Energy Σ (s_Z y_i + V_rep,i) over a padded batch (scalar) and per-atom terms (B, N).

    ``model`` is an :class:`jat.models.EnergyModel`; positions (B, N, 3) Å, species (B, N)
    (negative = padding), cell and strain (B, 3, 3), ``nbrs`` with (B, E) leaves. The batch is
    evaluated as ONE disjoint graph of B·N nodes (edge indices offset per structure), so the
    model runs dense edge operations, never a vmapped scatter. Padded edges of structure b point
    at (b+1)·N, which keeps receivers sorted.
    """
    b, n = species.shape
    sym = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
    deform = jnp.eye(3, dtype=positions.dtype) + sym
    pos = jnp.matmul(positions, deform)
    lattice = jnp.matmul(cell, deform)

    def vectors(p, s, r, shifts, lat):
        return p[s] - p[r] + shifts.astype(p.dtype) @ lat

    vec = jax.vmap(vectors)(pos, nbrs.senders, nbrs.receivers, nbrs.shifts, lattice)
    offset = (jnp.arange(b, dtype=nbrs.senders.dtype) * n)[:, None]
    e = model.atomic_energies(
        params,
        scale,
        species.reshape(-1),
        vec.reshape(-1, 3),
        (nbrs.senders + offset).reshape(-1),
        (nbrs.receivers + offset).reshape(-1),
        nbrs.mask.reshape(-1),
    ).reshape(b, n)
    return e.sum(), e


def _evaluate(model, spec, forces, stress, params, scale, positions, species, cell):
    """Energies (B,), per-atom energies (B, N), forces (B, N, 3) and virials (B, 3, 3) of a
    padded batch; the neighbour lists are built inside, one per structure."""
    periodic = any(spec.pbc)
    nbrs = jax.vmap(graph.build, in_axes=(0, 0 if periodic else None, 0, None))(
        positions, cell if periodic else None, species >= 0, spec
    )
    strain = jnp.zeros(cell.shape, positions.dtype)
    fn = functools.partial(_network_energy, model, params, scale)
    out = {"overflow": jnp.any(nbrs.overflow), "n_edges": nbrs.n_edges}
    if forces or stress:
        argnums = (0, 3) if stress else (0,)
        (_, energies), grads = jax.value_and_grad(fn, argnums=argnums, has_aux=True)(
            positions, species, cell, strain, nbrs
        )
        out["forces"] = -grads[0]
        if stress:
            out["virial"] = grads[1]
    else:
        _, energies = fn(positions, species, cell, strain, nbrs)
    out["energy"] = energies.sum(axis=1)
    out["energies"] = energies
    return out


# ---------------------------------------------------------------------------------------------


def _resolve_pbc(cell: np.ndarray | None, pbc: Any) -> tuple[bool, bool, bool]:
    if pbc is None:
        pbc = cell is not None and np.any(cell)
    arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return (bool(arr[0]), bool(arr[1]), bool(arr[2]))


def _bucket(n: int, multiple: int = 8) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclasses.dataclass(frozen=True, eq=False)
class Potential:
    """A trained (or freshly initialised) interatomic potential.

    Attributes:
        module: the Flax module mapping a graph to per-atom outputs.
        params: its parameters (a pytree).
        species: element symbols; species index k is ``species[k]``.
        cutoff: neighbour cutoff r_c in Å.
        energy_shift: (S,) per-species shift μ_Z in eV.
        energy_scale: (S,) per-species scale s_Z in eV.
        dtype: "float32" (default) or "float64"; float64 is enabled only inside this object's
            calls (``jax.enable_x64`` as a context), never globally.
        model: "jat", "schnet" or "custom"; with ``model_kwargs`` it rebuilds the module on load.
        repulsion: None, or a fixed short-range pair term (:class:`jat.models.ZBL`) added to
            the network's energy everywhere the potential is evaluated or trained.
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
    # Compiled functions, device copies of the parameters and neighbour-list specs. init=False:
    # every copy (dataclasses.replace included) starts with an empty cache, never a stale one.
    _cache: dict = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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
        **model_kwargs: Any,
    ) -> Potential:
        """Build a potential with freshly initialised parameters.

        Args:
            model: "jat", "schnet", or a Flax module with the models' call signature (then
                ``model_kwargs`` must be empty).
            species: element symbols, e.g. ``["H", "C", "N", "O"]``.
            cutoff: r_c in Å.
            seed: PRNG seed for the initial parameters.
            dtype: "float32" or "float64".
            repulsion: None (default), "zbl", or ``{"kind": "zbl", "radius_scale": 0.8,
                "radii": [[...]]}``: a ZBL pair repulsion switched off at the given (S, S)
                radii in Å, or at radius_scale × the sum of covalent radii where a radius is
                None/NaN or none are given (see :mod:`jat.models.repulsion`), for long MD.
            **model_kwargs: hyperparameters of the named model (see ``jat.models``).
        """
        species = _check_species(species)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if isinstance(model, str):
            name = model.lower()
            if name not in MODELS:
                raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
            module = MODELS[name](num_species=len(species), cutoff=float(cutoff), **model_kwargs)
            kwargs = dict(model_kwargs)
        elif isinstance(model, nn.Module):
            if model_kwargs:
                raise ValueError("model_kwargs are only accepted with a model name")
            module, name, kwargs = model, "custom", {}
        else:
            raise TypeError(f"model must be a name or a flax.linen.Module, got {type(model)}")
        params = _init_params(module, seed, dtype)
        n = len(species)
        repulsion = make_repulsion(repulsion, species, cutoff)
        return cls(
            module=module,
            params=params,
            species=species,
            cutoff=float(cutoff),
            energy_shift=np.zeros(n),
            energy_scale=np.ones(n),
            dtype=dtype,
            model=name,
            model_kwargs=kwargs,
            repulsion=repulsion,
        )

    @property
    def energy_model(self) -> EnergyModel:
        """The network and the repulsion as one per-atom energy function."""
        return EnergyModel(self.module, self.repulsion)

    def with_energy_reference(
        self, shift: Sequence[float] | None = None, scale: Sequence[float] | None = None
    ) -> Potential:
        """A copy with new per-species energy shift μ_Z and/or scale s_Z (eV), in species order."""
        n = len(self.species)
        new_shift = self.energy_shift if shift is None else _vector(shift, n, "shift")
        new_scale = self.energy_scale if scale is None else _vector(scale, n, "scale")
        return dataclasses.replace(self, energy_shift=new_shift, energy_scale=new_scale)

    def with_repulsion(self, repulsion: str | Mapping[str, Any] | ZBL | None) -> Potential:
        """A copy with another short-range repulsion (see :meth:`create`), or none.

        Parameters are kept, so this is sound only where the new term vanishes on the training
        data (the ZBL default does on EAN, whose closest pair, N–H at 0.94 Å, lies beyond its
        0.82 Å switch-off); otherwise retrain with it (``model.repulsion`` in the config).
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
        if not isinstance(dtype, str):  # numpy / jax dtypes and scalar types
            dtype = np.dtype(dtype).name
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dtype == self.dtype:
            return self
        key = ("with_dtype", dtype)
        copy = self._cache.get(key)
        if copy is None:
            dt = jnp.dtype(dtype)
            with _precision(dtype):
                params = jax.tree.map(lambda x: jnp.asarray(x, dt), self.params)
            copy = self._cache[key] = dataclasses.replace(self, params=params, dtype=dtype)
        return copy

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
    ) -> Results:
        """Energy, per-atom energies, forces and stress of one structure.

        Pass an ASE ``Atoms`` or arrays: ``positions`` (N, 3) Å with ``numbers`` (atomic
        numbers) or ``symbols``, and optionally ``cell`` (3, 3) Å (rows are lattice vectors) and
        ``pbc``. ``stress`` defaults to True for fully periodic structures.
        """
        s = self._structure(atoms, positions, numbers, symbols, cell, pbc)
        return self._evaluate_structures([s], forces, stress, pad=False)[0]

    def compute_batch(
        self, structures: Sequence[Any], *, forces: bool = True, stress: bool | None = None
    ) -> list[Results]:
        """Evaluate several ASE ``Atoms`` in one compiled call over a padded batch.

        The batch is one disjoint graph (neighbour lists built per structure, under ``vmap``).
        All structures must share their ``pbc``. Atoms are padded to a multiple of 8 per batch.
        """
        ss = [self._structure(a, None, None, None, None, None) for a in structures]
        if not ss:
            return []
        for k, s in enumerate(ss):
            if s.pbc != ss[0].pbc:
                raise ValueError(
                    f"structure {k} has pbc {s.pbc} but structure 0 has {ss[0].pbc}; "
                    "batch structures with the same periodicity together"
                )
        return self._evaluate_structures(ss, forces, stress, pad=True)

    def energy(self, atoms: Any) -> float:
        """Total energy (eV) of an ASE ``Atoms``."""
        return self.compute(atoms, forces=False, stress=False).energy

    def forces(self, atoms: Any) -> np.ndarray:
        """Forces (N, 3) eV/Å of an ASE ``Atoms``."""
        return self.compute(atoms, stress=False).forces

    def stress(self, atoms: Any) -> np.ndarray:
        """Stress (3, 3) eV/Å³ of a fully periodic ASE ``Atoms``."""
        return self.compute(atoms, forces=False, stress=True).stress

    def calculator(self, **kwargs: Any):
        """An ASE calculator (energy, free_energy, energies, forces, stress) for this potential.

        Keyword arguments go to :class:`jat.calculator.JATCalculator`: ``skin`` (Å, default 1.0:
        the neighbour list is reused until an atom moved more than skin/2) and ``dtype``
        ("float64" evaluates a float64 copy of this potential).
        """
        from jat.calculator import JATCalculator

        return JATCalculator(self, **kwargs)

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``metadata.json`` (versioned, human-readable) and ``params.msgpack`` (no pickle).

        The directory is written beside the target and swapped in at the end, so an existing
        potential at ``directory`` is only replaced once the new one is complete.
        """
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.write_files(tmp)
        return directory

    def write_files(self, directory: str | os.PathLike) -> None:
        """Write the potential's two files into an existing ``directory`` (not atomic; see
        :meth:`save`). Used by checkpoints that add files of their own beside them."""
        from flax import serialization

        directory = Path(directory)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "jat_version": _jat_version(),
            "model": self.model,
            "module_class": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
            "model_kwargs": _jsonable(dict(self.model_kwargs)),
            "species": list(self.species),
            "cutoff": self.cutoff,
            "dtype": self.dtype,
            "energy_shift": [float(x) for x in self.energy_shift],
            "energy_scale": [float(x) for x in self.energy_scale],
            "repulsion": None if self.repulsion is None else self.repulsion.to_dict(),
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(self.params))),
        }
        params = jax.tree.map(np.asarray, self.params)
        (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (directory / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(params))

    @classmethod
    def load(cls, directory: str | os.PathLike, module: nn.Module | None = None) -> Potential:
        """Load a potential written by :meth:`save`, or the best model of a training run when
        ``directory`` is a run directory of ``python -m jat.train`` (it loads ``<run>/best``).

        ``module`` is required only for potentials built from a custom Flax module.
        """
        from flax import serialization

        directory = Path(directory)
        recover(directory)
        best = directory / "best"
        if not (directory / METADATA_FILE).exists() and (best / METADATA_FILE).exists():
            directory = best
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no jat potential metadata here")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: 'format' is {meta.get('format')!r}, not {FORMAT!r}")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta['format_version']} is newer than this jat "
                f"({FORMAT_VERSION}); upgrade jat"
            )
        for key in ("model", "species", "cutoff", "dtype", "energy_shift", "energy_scale"):
            if key not in meta:
                raise ValueError(f"{meta_path}: missing entry {key!r}")
        kwargs = _from_jsonable(meta.get("model_kwargs", {}))
        if meta["model"] == "custom":
            if module is None:
                raise ValueError(
                    f"{meta_path}: saved from a custom module ({meta.get('module_class')}); "
                    "pass module=... to Potential.load"
                )
            pot = cls.create(module, meta["species"], meta["cutoff"], dtype=meta["dtype"])
        else:
            pot = cls.create(
                meta["model"], meta["species"], meta["cutoff"], dtype=meta["dtype"], **kwargs
            )
        try:
            repulsion = make_repulsion(meta.get("repulsion"), pot.species, pot.cutoff)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{meta_path}: entry 'repulsion': {err}") from None
        pot = dataclasses.replace(pot, repulsion=repulsion)
        params_path = directory / PARAMS_FILE
        if not params_path.is_file():
            raise FileNotFoundError(f"{params_path}: parameter file missing")
        try:
            raw = serialization.msgpack_restore(params_path.read_bytes())
        except Exception as err:  # msgpack raises several types for corrupt data
            raise ValueError(f"{params_path}: cannot read parameters ({err})") from None
        params = _restore_params(pot.params, raw, params_path, pot.dtype)
        return dataclasses.replace(
            pot.with_params(params),
            energy_shift=_vector(meta["energy_shift"], len(pot.species), "energy_shift"),
            energy_scale=_vector(meta["energy_scale"], len(pot.species), "energy_scale"),
        )

    # ---------------------------------------------------------------- internals

    def _structure(self, atoms, positions, numbers, symbols, cell, pbc) -> _Structure:
        if atoms is not None:
            positions = atoms.get_positions()
            numbers = atoms.get_atomic_numbers()
            cell = np.asarray(atoms.get_cell()[:], dtype=np.float64)
            pbc = tuple(bool(p) for p in atoms.get_pbc())
        elif positions is None:
            raise ValueError("pass an ASE Atoms or positions with numbers/symbols")
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
            raise ValueError(f"positions of atom {bad} are not finite")
        if numbers is None and symbols is None:
            raise ValueError("pass numbers or symbols with positions")
        if symbols is None:
            symbols = [chemical_symbols[int(z)] for z in np.asarray(numbers).ravel()]
        if len(symbols) != len(positions):
            raise ValueError(f"{len(symbols)} species for {len(positions)} positions")
        species = self._species_indices(symbols)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        if cell.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
        pbc = _resolve_pbc(cell, pbc)
        return _Structure(positions, species, cell, pbc)

    def _species_indices(self, symbols: Sequence[str]) -> np.ndarray:
        lookup = self._cache.get("lookup")
        if lookup is None:
            lookup = self._cache["lookup"] = {s: k for k, s in enumerate(self.species)}
        try:
            return np.fromiter((lookup[s] for s in symbols), dtype=np.int32, count=len(symbols))
        except KeyError:
            for k, s in enumerate(symbols):
                if s not in lookup:
                    raise ValueError(
                        f"atom {k} is {s}, which this potential does not know "
                        f"(species: {', '.join(self.species)})"
                    ) from None
            raise

    def _device_constants(self):
        const = self._cache.get("const")
        if const is None:
            dt = jnp.dtype(self.dtype)
            const = (
                jax.tree.map(lambda x: jnp.asarray(x, dt), self.params),
                jnp.asarray(self.energy_scale, dt),
            )
            self._cache["const"] = const
        return const

    def _compiled(self, spec, forces: bool, stress: bool):
        key = ("fn", spec, forces, stress)
        fn = self._cache.get(key)
        if fn is None:
            f = functools.partial(_evaluate, self.energy_model, spec, forces, stress)
            fn = self._cache[key] = jax.jit(f)
        return fn

    def _evaluate_structures(
        self, ss: list[_Structure], forces: bool, stress: bool | None, pad: bool
    ) -> list[Results]:
        """Results of structures sharing one pbc; ``stress=None`` means "if fully periodic"."""
        periodic = all(ss[0].pbc)
        want_stress = periodic if stress is None else bool(stress)
        if want_stress and not periodic:
            raise ValueError("stress needs a fully periodic structure (pbc = True on all axes)")
        out = self._run(ss, forces, want_stress, pad)
        return [self._results(out, s, k, forces, want_stress) for k, s in enumerate(ss)]

    def _run(self, ss: list[_Structure], forces: bool, stress: bool, pad: bool) -> dict:
        """Evaluate structures as one padded batch (atoms padded to a multiple of 8 if ``pad``)."""
        dt = np.dtype(self.dtype)
        longest = max(len(s.positions) for s in ss)
        n = _bucket(longest) if pad else max(longest, 1)  # an empty structure gets a padded slot
        pos = np.zeros((len(ss), n, 3), dt)
        species = np.full((len(ss), n), -1, np.int32)
        for k, s in enumerate(ss):
            pos[k, : len(s.positions)] = s.positions
            species[k, : len(s.species)] = s.species
        cell = np.stack([s.cell for s in ss]).astype(dt)
        pbc = ss[0].pbc
        spec_key = ("spec", pos.shape, pbc)
        with _precision(self.dtype):
            params, scale = self._device_constants()
            spec = self._cache.get(spec_key)
            if spec is None:
                spec = self._allocate(pos, cell, pbc, species)
            while True:
                out = self._compiled(spec, forces, stress)(params, scale, pos, species, cell)
                if not bool(out["overflow"]):
                    break
                spec = self._allocate(pos, cell, pbc, species)
            self._cache[spec_key] = spec
            return jax.tree.map(np.asarray, out)

    def _allocate(self, pos, cell, pbc, species):
        """Static neighbour-list bounds measured on these (concrete) positions, with headroom."""
        cell_arg = cell if any(pbc) else None
        return graph.allocate(pos, self.cutoff, cell=cell_arg, pbc=pbc, mask=species >= 0)

    def _results(self, out, s: _Structure, k: int, forces: bool, stress: bool) -> Results:
        n = len(s.positions)

        def take(name):
            return np.asarray(out[name][k], dtype=np.float64)

        shift = self.energy_shift[s.species]
        energies = take("energies")[:n] + shift
        energy = float(take("energy")) + float(np.sum(shift))
        f = take("forces")[:n] if forces else None
        sigma = None
        if stress:
            volume = abs(float(np.linalg.det(s.cell)))
            sigma = take("virial") / volume
        return Results(energy=energy, energies=energies, forces=f, stress=sigma)


# ---------------------------------------------------------------------------------------------
# helpers


def _precision(dtype: str):
    """Context enabling float64 inside a float64 potential's calls only."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _init_params(module: nn.Module, seed: int, dtype: str):
    """Initialise parameters on a two-atom dummy graph, in float32 so that a seed gives the same
    parameters whatever the dtype, then cast to ``dtype``."""
    species = jnp.array([0, 0], jnp.int32)
    vec = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], jnp.float32)
    senders = jnp.array([1, 0], jnp.int32)
    receivers = jnp.array([0, 1], jnp.int32)
    mask = jnp.array([True, True])
    params = module.init(jax.random.PRNGKey(seed), species, vec, senders, receivers, mask)
    with _precision(dtype):
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)


def _check_species(species: Sequence[str]) -> tuple[str, ...]:
    if isinstance(species, str):
        raise TypeError("species must be a list of element symbols, e.g. ['H', 'C', 'N', 'O']")
    out = tuple(str(s) for s in species)
    if not out:
        raise ValueError("species must not be empty")
    unknown = [s for s in out if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate species in {list(out)}")
    return out


def _vector(values: Sequence[float], n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one value per species ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _from_jsonable(obj: Any) -> Any:
    """JSON lists back to tuples, so module attributes stay hashable."""
    if isinstance(obj, dict):
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_from_jsonable(v) for v in obj)
    return obj


def _restore_params(template: Any, raw: Any, path: Path, dtype: str) -> Any:
    """Check ``raw`` (nested dict of arrays) against the template's structure and shapes."""
    from flax import serialization

    flat_t = _flatten(serialization.to_state_dict(template))
    flat_r = _flatten(raw)
    missing = sorted(set(flat_t) - set(flat_r))
    extra = sorted(set(flat_r) - set(flat_t))
    if missing or extra:
        raise ValueError(
            f"{path}: parameters do not match the model: missing {missing[:5]}, unexpected "
            f"{extra[:5]}"
        )
    for key, t in flat_t.items():
        if np.shape(flat_r[key]) != np.shape(t):
            raise ValueError(
                f"{path}: parameter {key} has shape {np.shape(flat_r[key])}, model expects "
                f"{np.shape(t)}"
            )
    dt = jnp.dtype(dtype)
    with _precision(dtype):
        restored = serialization.from_state_dict(template, raw)
        return jax.tree.map(lambda x: jnp.asarray(x, dt), restored)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _jat_version() -> str:
    from jat import __version__

    return __version__
