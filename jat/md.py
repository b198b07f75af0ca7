"""JAX-MD integration: a :class:`jat.Potential` as a JAX-MD energy function.

The whole MD loop (integrator, neighbour-list update and potential) can then be one jitted
function on the device::

    import jax, jax.numpy as jnp
    from ase import units
    from jax_md import simulate
    import jat.md

    system = jat.md.jax_md_system(pot, atoms)            # ASE Atoms -> box, R, masses, functions
    nbrs = system.neighbor_fn.allocate(system.positions)
    init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=0.5 * units.fs)
    state = init(jax.random.PRNGKey(0), system.positions, kT=300 * units.kB,
                 mass=system.masses, neighbor=nbrs)

    chunk = jat.md.make_chunk(apply, 100)              # 100 steps in one compiled call
    for _ in range(10):                                  # overflow: re-allocated and redone
        state, nbrs, _, _ = jat.md.run_chunk(chunk, state, nbrs, system.neighbor_fn)

Units are ASE's: Å, eV, amu, and time in Å·sqrt(amu/eV) (``ase.units.fs`` ≈ 0.0982 of it), so
``dt = 0.5 * ase.units.fs`` and ``kT = T * ase.units.kB``.

**Cell convention.** ASE's cell has the lattice vectors as ROWS (r = s @ cell); JAX-MD's
``space.periodic_general`` takes a box whose COLUMNS are the lattice vectors (r = box @ s), so
``box = cell.T`` (:func:`box_from_cell`). JAX-MD's cell list assumes an upper-triangular box,
i.e. a lower-triangular ASE cell (a along x, b in the xy plane): :func:`jax_md_system` rotates
the structure into that standard orientation when needed and keeps the rotation
(``system.rotation``) to map positions and forces back.

**Two neighbour lists**, same interface (``neighbor_fn.allocate(R)`` on the host,
``nbrs.update(R)`` inside jit, ``nbrs.did_buffer_overflow``):

* ``neighbor_list="jax_md"`` (default): ``jax_md.partition.neighbor_list`` in the Sparse format
  (OrderedSparse and Dense are accepted too), edge vectors from JAX-MD's displacement function
  (minimum image), so forces come out Cartesian with fractional coordinates too, and
  ``box=``/``perturbation=`` keyword arguments (NPT, ``quantity.stress``) work. Minimum image
  requires ``cutoff + skin`` below half of every height of the cell.
* ``neighbor_list="jat"``: :func:`jat.graph.build` with explicit periodic shifts, for any cell
  (also cells smaller than twice the cutoff) and for free space (``box=None``); Cartesian,
  unwrapped positions (``shift_fn`` never wraps); rebuilt inside jit when an atom moved more than
  skin/2 or the box changed. Needs no jax-md (only ``jax_md.simulate`` for the integrators).

In both, the edges shorter than the cutoff at the current positions are compacted into a static
number of slots (their count at allocation plus 20 %, on a ladder of sizes), so the model costs
what it costs on a list without skin; ``nbrs.update`` raises the overflow flag when they no
longer fit, and energy and forces are NaN rather than missing an edge.

For a float64 potential enable x64 (``jax.config.update("jax_enable_x64",
True)``, or run inside ``with jax.enable_x64(True):``); the energy function refuses to trace a
float64 potential without it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from jat import graph
from jat.graph._common import heights
from jat.graph.neighbors import _bucket as _capacity_bucket

DEFAULT_SKIN = 0.5  # Å
MODEL_HEADROOM = 1.2  # model edge slots over the edges within the cutoff at allocation


# ---------------------------------------------------------------------------------------------
# Cell conventions


def box_from_cell(cell) -> np.ndarray:
    """JAX-MD box (columns are lattice vectors) from an ASE cell (rows are lattice vectors)."""
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    return cell.T.copy()


def cell_from_box(box) -> np.ndarray:
    """ASE cell (rows) from a JAX-MD (3, 3) box (columns)."""
    return np.asarray(box, dtype=np.float64).T.copy()


def standard_form(atoms):
    """A copy of ``atoms`` rotated so that its cell is lower triangular (a along x, b in the xy
    plane), and the rotation Q (3, 3): new positions = old positions @ Q.T, old forces = new
    forces @ Q. Q is the identity when the cell already is lower triangular."""
    atoms = atoms.copy()
    cell = atoms.cell.array
    if np.allclose(cell, np.tril(cell), atol=1e-12 * max(1.0, np.abs(cell).max())):
        return atoms, np.eye(3)
    rcell, q = atoms.cell.standard_form()
    atoms.set_cell(rcell, scale_atoms=True)
    return atoms, np.asarray(q)


# ---------------------------------------------------------------------------------------------
# Energy functions


@dataclasses.dataclass(frozen=True)
class MDFunctions:
    """What :func:`jax_md_energy_fn` returns.

    energy_fn(R, neighbor=nbrs, **kwargs) -> energy (eV); neighbor_fn with ``allocate(R)`` and
    ``update(R, nbrs)``; displacement_fn(Ra, Rb) -> Ra − Rb (Å, minimum image); shift_fn(R, dR);
    box: the (3, 3) JAX-MD box (columns are lattice vectors) or None in free space.
    """

    energy_fn: Callable[..., jax.Array]
    neighbor_fn: Any
    displacement_fn: Callable
    shift_fn: Callable
    box: np.ndarray | None

    def __iter__(self):  # energy_fn, neighbor_fn, displacement_fn, shift_fn = jax_md_energy_fn()
        return iter((self.energy_fn, self.neighbor_fn, self.displacement_fn, self.shift_fn))


def jax_md_energy_fn(
    potential,
    species: Sequence[str] | Sequence[int] | np.ndarray,
    box=None,
    *,
    fractional: bool = False,
    skin: float = DEFAULT_SKIN,
    neighbor_list: str = "jax_md",
    format: str = "sparse",
    capacity_multiplier: float = 1.25,
    disable_cell_list: bool = False,
    per_atom: bool = False,
) -> MDFunctions:
    """A JAX-MD energy function and neighbour list for ``potential``.

    Args:
        potential: a :class:`jat.Potential`.
        species: the atoms' element symbols or atomic numbers (N,), fixed for the simulation.
        box: JAX-MD box (3, 3), columns are lattice vectors (``box_from_cell(atoms.cell)``), or
            None for free space (no periodicity).
        fractional: positions R in fractional coordinates of the box (JAX-MD's convention; forces
            are still Cartesian). Only with ``neighbor_list="jax_md"``.
        skin: Verlet skin (Å): the list holds pairs within cutoff + skin and is rebuilt by
            ``nbrs.update`` when an atom moved more than skin / 2 (JAX-MD's ``dr_threshold``).
        neighbor_list: "jax_md" (``jax_md.partition.neighbor_list``) or "jat"
            (:func:`jat.graph.build`); see the module documentation.
        format: JAX-MD list format, "sparse" (default), "ordered_sparse" or "dense".
        capacity_multiplier: spare list capacity at allocation (JAX-MD's; the jat list uses
            :func:`jat.graph.allocate`'s headroom).
        disable_cell_list: JAX-MD's option (all pairs instead of a cell list).
        per_atom: energy_fn returns the (N,) per-atom energies instead of their sum.

    Returns:
        :class:`MDFunctions` (energy_fn, neighbor_fn, displacement_fn, shift_fn, box).
    """
    species_idx = _species(potential, species)
    skin = float(skin)
    if not (np.isfinite(skin) and skin >= 0):
        raise ValueError(f"skin must be a finite number of Å >= 0, got {skin}")
    periodic = box is not None
    box_np = None
    if periodic:
        box_np = np.asarray(box, dtype=np.float64)
        if box_np.shape != (3, 3):
            raise ValueError(f"box must be a (3, 3) matrix (columns are lattice vectors), got "
                             f"shape {box_np.shape}")
        if not np.all(np.isfinite(box_np)) or abs(np.linalg.det(box_np)) < 1e-10:
            raise ValueError(f"box must be a finite, non-singular 3x3 matrix, got {box_np}")
    model = _model_fn(potential, species_idx, per_atom)
    if neighbor_list == "jax_md":
        return _jax_md_backend(
            potential, model, box_np, fractional, skin, format, capacity_multiplier,
            disable_cell_list,
        )
    if neighbor_list == "jat":
        if fractional:
            raise ValueError("neighbor_list='jat' works in Cartesian coordinates; use "
                             "fractional=False, or neighbor_list='jax_md'")
        return _jat_backend(potential, model, box_np, skin, len(species_idx))
    raise ValueError(f"neighbor_list must be 'jax_md' or 'jat', got {neighbor_list!r}")


def _species(potential, species) -> np.ndarray:
    arr = np.asarray(species)
    if arr.ndim != 1:
        raise ValueError(f"species must be one symbol or atomic number per atom, got {arr.shape}")
    if arr.dtype.kind in "iu":
        bad = [int(z) for z in arr if not 0 < int(z) < len(chemical_symbols)]
        if bad:
            raise ValueError(f"invalid atomic numbers {bad[:5]}")
        symbols = [chemical_symbols[int(z)] for z in arr]
    else:
        symbols = [str(s) for s in arr]
    return potential._species_indices(symbols)


def _check_x64(potential) -> None:
    if potential.dtype == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise RuntimeError(
            "this potential is float64 but JAX's x64 mode is off: call "
            "jax.config.update('jax_enable_x64', True) or run inside `with "
            "jax.enable_x64(True):` (or use potential.with_dtype('float32'))"
        )


def _model_fn(potential, species_idx: np.ndarray, per_atom: bool):
    """energy(vector_fn, senders, receivers, mask, capacity, ordered): the model on a list.

    The list (E,) holds every pair within cutoff + skin at its build; ``vector_fn(idx)`` gives
    the edge vectors r_j − r_i of the list entries ``idx``. The entries shorter than the cutoff
    now are compacted into ``capacity`` (static) slots, keeping their order, so the model runs on
    about the edges within the cutoff rather than on the whole list. ``ordered``: the receivers
    are already sorted (else they are sorted first, as the models' segment operations expect).
    More than ``capacity`` such edges cannot be described: energy and forces are NaN then (never
    a silent drop), and the neighbour list's ``update`` has raised its overflow flag.
    """
    model = potential.energy_model
    cutoff = potential.cutoff
    n = len(species_idx)

    def energy(vector_fn, senders, receivers, mask, capacity: int, ordered: bool = True):
        _check_x64(potential)
        dt = jnp.dtype(potential.dtype)
        params = jax.tree.map(lambda x: jnp.asarray(x, dt), potential.params)
        scale = jnp.asarray(potential.energy_scale, dt)
        shift = jnp.asarray(potential.energy_shift, dt)
        species = jnp.asarray(species_idx, jnp.int32)
        everything = jnp.arange(senders.shape[0])
        within = _within(vector_fn(everything), mask, cutoff)
        if not ordered:
            order = jnp.argsort(jnp.where(within, receivers, n), stable=True)
            senders, receivers, within = senders[order], receivers[order], within[order]
            everything = order
        count = jnp.sum(within, dtype=jnp.int32)
        (idx,) = jnp.nonzero(within, size=capacity, fill_value=0)
        valid = jnp.arange(capacity) < count
        vectors = jnp.where(valid[:, None], vector_fn(everything[idx]).astype(dt), 0.0)
        e = model.atomic_energies(
            params, scale, species, vectors, jnp.where(valid, senders[idx], n),
            jnp.where(valid, receivers[idx], n), valid,
        )
        e = e + shift[species]
        e = e * jnp.where(count > capacity, jnp.nan, 1.0).astype(dt)
        return e if per_atom else jnp.sum(e)

    return energy


def _within(vectors, mask, cutoff: float):
    """Listed pairs shorter than ``cutoff`` now (no gradient flows through the test)."""
    vectors = jax.lax.stop_gradient(vectors)
    return mask & (jnp.sum(vectors * vectors, axis=-1) < cutoff * cutoff)


def _model_capacity(count: int, extra: int = 0) -> int:
    """Static model edge slots for ``count`` edges within the cutoff (headroom for motion)."""
    return _capacity_bucket(max(count, 1) * MODEL_HEADROOM + extra)


# ---------------------------------------------------------------------------------------------
# JAX-MD's neighbour list


def _jax_md_backend(potential, model, box, fractional, skin, format, multiplier, no_cells):
    try:
        from jax_md import partition, space
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "neighbor_list='jax_md' needs jax-md (pip install 'jat[md]' or pip install jax-md); "
            "neighbor_list='jat' works without it"
        ) from err
    formats = {
        "sparse": partition.Sparse,
        "ordered_sparse": partition.OrderedSparse,
        "dense": partition.Dense,
    }
    if format not in formats:
        raise ValueError(f"format must be one of {sorted(formats)}, got {format!r}")
    reach = potential.cutoff + skin
    if box is None:
        if fractional:
            raise ValueError("fractional coordinates need a box")
        displacement, shift = space.free()
        nbr_box, no_cells = 1.0, True
    else:
        h = heights(box.T, np)
        if reach >= 0.5 * h.min():
            raise ValueError(
                f"cutoff + skin = {reach:.3f} Å is not below half the smallest cell height "
                f"({h.min():.3f} Å): JAX-MD's minimum-image neighbour list would miss periodic "
                "images; use a larger cell, a smaller skin, or neighbor_list='jat'"
            )
        if not np.allclose(box, np.triu(box), atol=1e-12 * np.abs(box).max()) and not no_cells:
            raise ValueError(
                "JAX-MD's cell list needs an upper-triangular box (a lower-triangular ASE cell): "
                "rotate the structure with jat.md.standard_form(atoms) (jax_md_system does), or "
                "pass disable_cell_list=True"
            )
        # the box in the potential's dtype, so that a float32 run stays float32 under x64
        nbr_box = jnp.asarray(box, potential.dtype)
        displacement, shift = space.periodic_general(nbr_box, fractional_coordinates=fractional)
    kind = formats[format]
    fns = partition.neighbor_list(
        displacement,
        nbr_box,
        potential.cutoff,
        dr_threshold=skin,
        capacity_multiplier=multiplier,
        disable_cell_list=no_cells,
        fractional_coordinates=fractional,
        format=kind,
    )
    cutoff = potential.cutoff
    ratio = (cutoff / reach) ** 3  # expected share of the listed pairs within the cutoff
    disp_keys = ("box", "new_box", "perturbation")

    def edges(R, neighbor, kwargs):
        """(vector_fn, senders, receivers, mask, ordered, capacity) of a JAX-MD list."""
        d = functools.partial(displacement, **{k: kwargs[k] for k in disp_keys if k in kwargs})
        n = R.shape[0]
        idx = neighbor.idx
        ordered = True
        if neighbor.format is partition.Dense:
            receivers = jnp.repeat(jnp.arange(n, dtype=idx.dtype), idx.shape[1])
            senders = idx.reshape(-1)
        elif neighbor.format is partition.OrderedSparse:  # one direction per pair: add the other
            receivers = jnp.concatenate([idx[0], idx[1]])
            senders = jnp.concatenate([idx[1], idx[0]])
            ordered = False
        else:  # Sparse: idx[1] is the centre, in ascending order; idx[0] its neighbour
            receivers, senders = idx[1], idx[0]
        mask = (receivers < n) & (senders < n)

        def vector_fn(k):
            return jax.vmap(d)(R[senders[k]], R[receivers[k]])  # r_j - r_i

        listed = senders.shape[0]  # more slots than listed pairs would only cost time
        capacity = min(_capacity_bucket(listed * ratio), listed)
        if listed >= n * (n - 1):  # every pair listed (small systems): the list can grow no more
            capacity = listed
        return vector_fn, senders, receivers, mask, ordered, capacity

    def count_within(R, neighbor, kwargs):
        """(edges within the cutoff now, model slots, listed pairs) of a JAX-MD list."""
        vector_fn, senders, _, mask, _, capacity = edges(R, neighbor, kwargs)
        listed = senders.shape[0]
        within = _within(vector_fn(jnp.arange(listed)), mask, cutoff)
        return jnp.sum(within, dtype=jnp.int32), capacity, listed

    def allocate(R, extra_capacity: int = 0, **kwargs):
        """Host: jax-md's allocation, with room for the model's edges within the cutoff."""
        n = np.shape(R)[0]
        for _ in range(16):
            nbrs = _plain_static_fields(fns.allocate(R, extra_capacity, **kwargs))
            count, capacity, listed = count_within(R, nbrs, kwargs)
            need = int(count) * MODEL_HEADROOM
            if capacity >= min(need, listed):
                return nbrs
            extra_capacity += int(np.ceil((need / ratio - listed) / n)) + 1
        raise RuntimeError(  # pragma: no cover - jax-md ignoring extra_capacity
            f"could not allocate room for {need:.0f} model edges (have {capacity})"
        )

    def update(R, neighbors, **kwargs):
        nbrs = fns.update(R, _plain_static_fields(neighbors), **kwargs)
        count, capacity, _ = count_within(R, nbrs, kwargs)
        return dataclasses.replace(
            nbrs, error=nbrs.error.update(partition.PEC.NEIGHBOR_LIST_OVERFLOW, count > capacity)
        )

    neighbor_fn = partition.NeighborListFns(allocate, update)

    def energy_fn(R, neighbor, **kwargs):
        """Energy (eV) of positions R (N, 3) with a JAX-MD neighbour list ``neighbor``."""
        vector_fn, senders, receivers, mask, ordered, capacity = edges(R, neighbor, kwargs)
        return model(vector_fn, senders, receivers, mask, capacity, ordered)

    return MDFunctions(energy_fn, neighbor_fn, displacement, shift, box)


def _plain_static_fields(nbrs):
    """``nbrs`` with its numeric static fields as plain Python numbers.

    jax-md keeps the cell size in the list's static pytree metadata, with fractional
    coordinates as a 0-d jax array (``cutoff / box`` computed with jax). JAX compares the
    metadata of pytrees of the same shapes in its global jit caches, also while tracing:
    ``jax_md.simulate``'s ``init_fn`` is jitted and calls ``jax.eval_shape(energy_fn, R,
    neighbor=nbrs)``, so this list is compared with the lists of earlier calls of the same
    energy function with the same shapes (another system, another test). A jax array there
    turns ``==`` into a tracer and JAX raises "Exception raised while checking equality of
    metadata fields of pytree". Python numbers compare safely and work the same in jax-md.
    """
    changes = {}
    size = nbrs.cell_size
    if size is not None and type(size) is not float and np.ndim(size) == 0:
        changes["cell_size"] = float(size)
    for name in ("max_occupancy", "cell_list_capacity"):
        value = getattr(nbrs, name)
        if value is not None and type(value) is not int and np.ndim(value) == 0:
            changes[name] = int(value)
    return dataclasses.replace(nbrs, **changes) if changes else nbrs


# ---------------------------------------------------------------------------------------------
# jat's neighbour list


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["senders", "receivers", "shifts", "mask", "reference", "box", "overflow"],
    meta_fields=["spec", "capacity", "update_fn"],
)
@dataclasses.dataclass(frozen=True)
class JatNeighborList:
    """A jat neighbour list with JAX-MD's interface: ``update(R)`` (jittable) rebuilds it when an
    atom moved more than skin / 2 since ``reference`` or the box changed; ``did_buffer_overflow``
    says a static bound was exceeded (the list's, or the ``capacity`` of model edges within the
    cutoff at a position it was updated to): allocate again on the host."""

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array
    reference: jax.Array  # (N, 3) positions at the last build
    box: jax.Array  # (3, 3) box at the last build (zeros in free space)
    overflow: jax.Array
    spec: graph.NeighborSpec
    capacity: int  # model edge slots (edges within the cutoff)
    update_fn: Callable

    def update(self, R, **kwargs) -> JatNeighborList:
        return self.update_fn(R, self, **kwargs)

    @property
    def did_buffer_overflow(self):
        return self.overflow


@dataclasses.dataclass(frozen=True)
class JatNeighborFns:
    """``allocate(R, box=None)`` (host: fits static sizes, builds) and ``update(R, nbrs)``."""

    allocate: Callable[..., JatNeighborList]
    update: Callable[..., JatNeighborList]

    def __call__(self, R, neighbors=None, **kwargs):
        return self.allocate(R, **kwargs) if neighbors is None else self.update(R, neighbors,
                                                                                **kwargs)


def _jat_backend(potential, model, box, skin, n_atoms):
    periodic = box is not None
    pbc = (periodic,) * 3
    reach = potential.cutoff + skin
    threshold_sq = (0.5 * skin) ** 2

    def current_box(R, kwargs):
        b = kwargs.get("new_box", kwargs.get("box"))
        if b is None:
            b = box if periodic else np.zeros((3, 3))
        return jnp.asarray(b, R.dtype)

    def build(R, b, spec):
        cell = b.T if periodic else None
        return graph.build(R, cell, None, spec)

    build_jit = jax.jit(build, static_argnums=2)

    def allocate(R, extra_capacity: int = 0, **kwargs) -> JatNeighborList:
        """Host: fits the static sizes to R; ``extra_capacity`` more model slots per atom."""
        R = jnp.asarray(R)
        if R.shape != (n_atoms, 3):
            raise ValueError(f"positions must have shape ({n_atoms}, 3), got {R.shape}")
        b = current_box(R, kwargs)
        cell = np.asarray(b, np.float64).T if periodic else None
        spec = graph.allocate(np.asarray(R, np.float64), reach, cell=cell, pbc=pbc)
        nbrs = build_jit(R, b, spec)
        nbrs = JatNeighborList(
            nbrs.senders, nbrs.receivers, nbrs.shifts, nbrs.mask, R, b, nbrs.overflow, spec, 0,
            update,
        )
        count = int(count_jit(R, nbrs, b))
        return dataclasses.replace(nbrs, capacity=_model_capacity(count, extra_capacity * n_atoms))

    def vector_fn(R, neighbor, b, kwargs):
        s, r, shifts = neighbor.senders, neighbor.receivers, neighbor.shifts

        def vectors(k):
            v = R[s[k]] - R[r[k]] + shifts[k].astype(R.dtype) @ b.T
            return _perturb(v, kwargs["perturbation"]) if "perturbation" in kwargs else v

        return vectors

    def count_within(R, neighbor, b, kwargs=None):
        vectors = vector_fn(R, neighbor, b, kwargs or {})(jnp.arange(neighbor.senders.shape[0]))
        return jnp.sum(_within(vectors, neighbor.mask, potential.cutoff), dtype=jnp.int32)

    count_jit = jax.jit(count_within)

    def update(R, neighbors: JatNeighborList, **kwargs) -> JatNeighborList:
        b = current_box(R, kwargs)
        moved = jnp.max(jnp.sum((R - neighbors.reference) ** 2, axis=-1))
        stale = (moved > threshold_sq) | jnp.any(b != neighbors.box)

        def rebuild(_):
            nbrs = build(R, b, neighbors.spec)
            return dataclasses.replace(
                neighbors,
                senders=nbrs.senders,
                receivers=nbrs.receivers,
                shifts=nbrs.shifts,
                mask=nbrs.mask,
                reference=R,
                box=b,
                overflow=neighbors.overflow | nbrs.overflow,
            )

        nbrs = jax.lax.cond(stale, rebuild, lambda _: neighbors, None)
        full = count_within(R, nbrs, b) > nbrs.capacity
        return dataclasses.replace(nbrs, overflow=nbrs.overflow | full)

    def energy_fn(R, neighbor: JatNeighborList, **kwargs):
        """Energy (eV) of Cartesian positions R (N, 3) with a jat neighbour list."""
        b = current_box(R, kwargs)
        return model(
            vector_fn(R, neighbor, b, kwargs), neighbor.senders, neighbor.receivers,
            neighbor.mask, neighbor.capacity,
        )

    def displacement(Ra, Rb, **kwargs):
        d = Ra - Rb
        if periodic:
            b = current_box(d, kwargs)
            frac = jnp.linalg.solve(b, d)
            d = b @ (frac - jnp.round(frac))
        if "perturbation" in kwargs:
            d = _perturb(d, kwargs["perturbation"])
        return d

    def shift(R, dR, **kwargs):  # unwrapped: the list's shifts stay valid
        return R + dR

    return MDFunctions(energy_fn, JatNeighborFns(allocate, update), displacement, shift, box)


def _perturb(vectors, perturbation):
    p = jnp.asarray(perturbation)
    return vectors * p if p.ndim < 2 else vectors @ p.T


# ---------------------------------------------------------------------------------------------
# Running: jitted chunks of steps, overflow handled on the host


def make_chunk(apply_fn: Callable, steps: int, observe: Callable | None = None) -> Callable:
    """A jitted ``chunk(state, nbrs) -> (state, nbrs, observation)`` advancing ``steps`` steps.

    ``apply_fn(state, neighbor=nbrs)`` is a JAX-MD integrator step (``simulate.nve``'s apply,
    ...); the list is updated to the new positions after every step, so its overflow flag
    covers every position the forces were evaluated at. ``observe(state, nbrs)`` (traced) is
    evaluated at the end of the chunk; without it the observation is None.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    @jax.jit
    def chunk(state, nbrs):
        def step(_, carry):
            state, nbrs = carry
            state = apply_fn(state, neighbor=nbrs)
            return state, nbrs.update(state.position)

        state, nbrs = jax.lax.fori_loop(0, steps, step, (state, nbrs))
        return state, nbrs, (None if observe is None else observe(state, nbrs))

    return chunk


def run_chunk(chunk: Callable, state, nbrs, neighbor_fn, max_retries: int = 8):
    """Host: one ``chunk`` (from :func:`make_chunk`) that never keeps an overflowed result.

    If the list (or the model's edge capacity) overflowed during the chunk, the result is
    dropped, the list is allocated again where the chunk ended (room for the denser
    configuration; at its start if the end is not finite; with 2 more slots per atom at each
    further attempt), brought back to the chunk's start positions, and the chunk is redone.

    Returns (state, nbrs, observation, reallocations).
    """
    for attempt in range(max_retries + 1):
        new_state, new_nbrs, observation = chunk(state, nbrs)
        if not bool(new_nbrs.did_buffer_overflow):
            return new_state, new_nbrs, observation, attempt
        at = new_state.position
        if not bool(jnp.all(jnp.isfinite(at))):  # NaN forces after a model-slot overflow
            at = state.position
        fresh = neighbor_fn.allocate(at, extra_capacity=2 * attempt)
        nbrs = neighbor_fn.update(state.position, fresh)
    raise RuntimeError(
        f"the neighbour list still overflowed after {max_retries} reallocations: the system is "
        "probably collapsing or exploding (check the time step and the potential)"
    )


# ---------------------------------------------------------------------------------------------
# From ASE Atoms


@dataclasses.dataclass(frozen=True)
class MDSystem:
    """A structure ready for JAX-MD (see :func:`jax_md_system`).

    positions: (N, 3) initial R (fractional if ``fractional``, else Cartesian Å, in the rotated
    frame); masses: (N,) amu; species: (N,) element symbols; box: JAX-MD box (columns are
    lattice vectors) or None; rotation Q: rotated = original @ Q.T (identity if not rotated);
    energy_fn, neighbor_fn, displacement_fn, shift_fn as in :class:`MDFunctions`.
    """

    energy_fn: Callable[..., jax.Array]
    neighbor_fn: Any
    displacement_fn: Callable
    shift_fn: Callable
    box: np.ndarray | None
    positions: np.ndarray
    masses: np.ndarray
    species: tuple[str, ...]
    rotation: np.ndarray
    fractional: bool

    def cartesian(self, R) -> np.ndarray:
        """Cartesian positions (N, 3) Å in the rotated frame from R."""
        R = np.asarray(R, np.float64)
        return R @ self.box.T if self.fractional else R

    def to_atoms(self, R, velocities=None):
        """An ASE ``Atoms`` (in the rotated frame, cell = box.T) at positions R; ``velocities``
        (N, 3) in ASE units (Å / ASE time unit), e.g. ``state.velocity``."""
        from ase import Atoms

        periodic = self.box is not None
        atoms = Atoms(
            list(self.species),
            positions=self.cartesian(R),
            cell=cell_from_box(self.box) if periodic else None,
            pbc=periodic,
        )
        atoms.set_masses(np.asarray(self.masses, np.float64))
        if velocities is not None:
            atoms.set_velocities(np.asarray(velocities, np.float64))
        return atoms


def jax_md_system(
    potential, atoms, *, fractional: bool = False, skin: float = DEFAULT_SKIN, **kwargs
) -> MDSystem:
    """JAX-MD functions and initial state for an ASE ``Atoms`` (fully periodic or free).

    A periodic cell that is not lower triangular is first rotated into standard form (JAX-MD's
    cell list needs an upper-triangular box); ``system.rotation`` maps back. Positions are
    Cartesian (Å) unless ``fractional``; keyword arguments go to :func:`jax_md_energy_fn`.
    """
    pbc = np.asarray(atoms.get_pbc(), bool)
    if pbc.any() and not pbc.all():
        raise ValueError(f"JAX-MD needs pbc all True or all False, got {pbc.tolist()}")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    rotation = np.eye(3)
    box = None
    if pbc.all():
        atoms, rotation = standard_form(atoms)
        box = box_from_cell(atoms.cell.array)
        if fractional:
            positions = atoms.get_scaled_positions(wrap=False)
        else:
            positions = atoms.get_positions()
    fns = jax_md_energy_fn(
        potential, atoms.get_chemical_symbols(), box, fractional=fractional, skin=skin, **kwargs
    )
    dt = np.dtype(potential.dtype)  # numpy: stays float64 until used under x64
    return MDSystem(
        energy_fn=fns.energy_fn,
        neighbor_fn=fns.neighbor_fn,
        displacement_fn=fns.displacement_fn,
        shift_fn=fns.shift_fn,
        box=box,
        positions=np.asarray(positions, dt),
        masses=np.asarray(atoms.get_masses(), dt),
        species=tuple(atoms.get_chemical_symbols()),
        rotation=rotation,
        fractional=fractional,
    )


__all__ = [
    "DEFAULT_SKIN",
    "JatNeighborList",
    "MDFunctions",
    "MDSystem",
    "box_from_cell",
    "cell_from_box",
    "jax_md_energy_fn",
    "jax_md_system",
    "make_chunk",
    "run_chunk",
    "standard_form",
]
