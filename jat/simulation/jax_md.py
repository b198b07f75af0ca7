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
* ``neighbor_list="jat"``: :class:`jat.graph.SkinList` (the ASE calculator's list too) with
  explicit periodic shifts, for any cell (also cells smaller than twice the cutoff) and for free
  space (``box=None``); Cartesian, unwrapped positions (``shift_fn`` never wraps); rebuilt inside
  jit when an atom moved more than skin/2 or the box changed. Needs no jax-md (only
  ``jax_md.simulate`` for the integrators).

In both, every edge vector comes from :meth:`jat.graph.Graph.edge_vectors` (with jax-md's list,
the periodic image shifts are the minimum-image ones), the edges shorter than the cutoff at the
current positions are compacted into a static number of slots (:func:`jat.graph.compact`: their
count at allocation plus 10 %, on a ladder of sizes), so the model costs what it costs on a list
without skin, and the energy is :func:`jat.predictor.predict`'s. ``nbrs.update`` raises the
overflow flag when the edges no longer fit, and energy and forces are NaN rather than missing an
edge; two atoms at one position make them NaN too, and :func:`run_chunk` reports either.

For a float64 potential enable x64 (``jax.config.update("jax_enable_x64",
True)``, or run inside ``with jax.enable_x64(True):``); the energy function refuses to trace a
float64 potential without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jat import graph
from jat.dtypes import precision
from jat.graph.errors import INPUT, GraphError
from jat.graph.geometry import cell_heights, check_cell, reduce_positions
from jat.graph.neighbors import capacity_bucket
from jat.graph.skin import SLOT_HEADROOM as MODEL_HEADROOM
from jat.potential.inputs import atomic_numbers_of, check_positions, structure_arrays
from jat.predictor import composition_energy, predict_any
from jat.uncertainty import Guard, UncertaintyError, atom_force_std, spread

DEFAULT_SKIN = graph.DEFAULT_SKIN
JatNeighborList = graph.SkinList  # the jat list, with JAX-MD's update/did_buffer_overflow


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

    For a committee the energy is the members' mean, ``member_energy_fn(R, neighbor=nbrs)``
    gives every member's total energy (K,) eV, and ``uncertainty_fn(R,
    neighbor=nbrs)`` the mean and calibrated σ of energy and forces (:func:`uncertainty`);
    both are None for a single potential.
    """

    energy_fn: Callable[..., jax.Array]
    neighbor_fn: Any
    displacement_fn: Callable
    shift_fn: Callable
    box: np.ndarray | None
    member_energy_fn: Callable[..., jax.Array] | None = None
    uncertainty_fn: Callable[..., dict[str, jax.Array]] | None = None

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
            (:class:`jat.graph.SkinList`); see the module documentation.
        format: JAX-MD list format, "sparse" (default), "ordered_sparse" or "dense".
        capacity_multiplier: spare list capacity at allocation (JAX-MD's; the jat list uses
            :func:`jat.graph.allocate`'s headroom).
        disable_cell_list: JAX-MD's option (all pairs instead of a cell list).
        per_atom: energy_fn returns the (N,) per-atom energies instead of their sum.

    Returns:
        :class:`MDFunctions` (energy_fn, neighbor_fn, displacement_fn, shift_fn, box).
    """
    arr = np.asarray(species)
    if arr.dtype.kind in "iuf":
        numbers = atomic_numbers_of(numbers=arr)
    else:
        numbers = atomic_numbers_of(symbols=[str(s) for s in np.ravel(arr)])
    species_idx = potential.species_table.indices(numbers)
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
        check_cell(box_np.T, (True, True, True))
    model = _model_fn(potential, species_idx, per_atom)
    if neighbor_list == "jax_md":
        fns = _jax_md_backend(
            potential, model, box_np, fractional, skin, format, capacity_multiplier,
            disable_cell_list, len(species_idx),
        )
    elif neighbor_list == "jat":
        if fractional:
            raise ValueError("neighbor_list='jat' works in Cartesian coordinates; use "
                             "fractional=False, or neighbor_list='jax_md'")
        fns = _jat_backend(potential, model, box_np, skin, len(species_idx))
    else:
        raise ValueError(f"neighbor_list must be 'jax_md' or 'jat', got {neighbor_list!r}")
    if not potential.members:
        return dataclasses.replace(fns, member_energy_fn=None)
    return dataclasses.replace(
        fns, uncertainty_fn=uncertainty(fns.member_energy_fn, potential.calibration)
    )


def uncertainty(member_energy_fn: Callable, calibration) -> Callable[..., dict[str, jax.Array]]:
    """``fn(R, neighbor=nbrs, **kwargs)`` -> {"energy", "energy_std" (eV), "forces" (N, 3),
    "forces_std" (N, 3) eV/Å, "atom_force_std" (N,) eV/Å}: the committee's means and σ
    (multiplied by ``calibration``'s factors), from every member's energy and forces
    (K backward passes, one per member). Jittable."""

    def fn(R, neighbor=None, **kwargs):
        def totals(R):
            return member_energy_fn(R, neighbor=neighbor, **kwargs)

        energies = totals(R)
        forces = -jax.jacrev(totals)(R)  # (K, N, 3)
        energy, energy_std = spread(energies, jnp)
        mean, std = spread(forces, jnp)
        std = std * calibration.forces
        return {
            "energy": energy,
            "energy_std": energy_std * calibration.energy,
            "forces": mean,
            "forces_std": std,
            "atom_force_std": atom_force_std(std, jnp),
        }

    return fn


def _check_x64(potential) -> None:
    if potential.dtype == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise RuntimeError(
            "this potential is float64 but JAX's x64 mode is off: call "
            "jax.config.update('jax_enable_x64', True) or run inside `with "
            "jax.enable_x64(True):` (or use potential.with_dtype('float32'))"
        )


def _model_fn(potential, species_idx: np.ndarray, per_atom: bool):
    """The model on a listed graph, :class:`ListedEnergy`: ``energy(full_graph, capacity, ordered,
    vectors)``.

    ``full_graph`` holds every listed pair (within cutoff + skin at its build) with its edge
    vectors' positions, cell and shifts; the pairs shorter than the cutoff now are compacted
    into ``capacity`` static slots (:func:`jat.graph.compact`, ``ordered``: the receivers are
    already sorted), and the predictor evaluates them. More edges than ``capacity``, or two atoms
    at one position, give NaN (never a silent drop); the list's ``update`` flags both.
    ``vectors``: the listed edge vectors if the caller has them (no gradient needed).
    """
    model = potential.energy_model
    cutoff = potential.cutoff
    dtype = potential.dtype
    committee = bool(potential.members)  # deep or shallow: predictions with a member axis
    stacked = potential.stacked  # deep: parameters with a member axis
    with precision(dtype):
        params, scale = potential.device_constants()
    species = np.asarray(species_idx, np.int32)
    shift = np.asarray(potential.energy_shift, np.float64)[..., species]  # (N,) or (K, N)
    composition = composition_energy(potential.energy_shift, species)  # () or (K,)

    def each(full: graph.Graph, capacity: int, ordered: bool = True, vectors=None,
             per_atom: bool = per_atom):
        """Energy () or per-atom energies (N,); for a committee with a leading member axis."""
        _check_x64(potential)
        dt = jnp.dtype(dtype)
        full = dataclasses.replace(
            full,
            species=jnp.asarray(species),
            positions=full.positions.astype(dt),
            cell=full.cell.astype(dt),
        )
        if vectors is not None:
            vectors = vectors.astype(dt)
        g, _, error = graph.compact(full, cutoff, capacity, ordered, vectors)
        p = predict_any(model, params, scale, g, committee=stacked, forces=False)
        valid = jnp.where(error == 0, 1.0, jnp.nan).astype(dt)
        if per_atom:
            return (p.energies + jnp.asarray(shift, dt)) * valid
        return (p.energy[..., 0] + jnp.asarray(composition, dt)) * valid

    return ListedEnergy(each, committee)


@dataclasses.dataclass(frozen=True)
class ListedEnergy:
    """The model on a listed graph (see :func:`_model_fn`): called, the energy () or per-atom
    energies (N,), a committee's members' mean; :meth:`members` the (K,) members' totals."""

    each: Callable[..., jax.Array]
    committee: bool

    def __call__(self, full: graph.Graph, capacity: int, ordered: bool = True, vectors=None):
        e = self.each(full, capacity, ordered, vectors)
        return jnp.mean(e, axis=0) if self.committee else e

    def members(self, full: graph.Graph, capacity: int, ordered: bool = True, vectors=None):
        """(K,) the committee members' total energies (eV)."""
        return self.each(full, capacity, ordered, vectors, per_atom=False)


def _perturbed(g: graph.Graph, perturbation) -> graph.Graph:
    """``g`` with every edge vector mapped by JAX-MD's ``perturbation`` (a scalar, a vector of
    axis factors, or a matrix P: v -> P v)."""
    p = jnp.asarray(perturbation, g.positions.dtype)
    matrix = p.T if p.ndim == 2 else jnp.eye(3, dtype=p.dtype) * p
    return g.transformed(matrix[None])


def _perturbed_vectors(vectors, perturbation):
    """Edge vectors (E, 3) mapped as :func:`_perturbed` maps a graph's."""
    p = jnp.asarray(perturbation, vectors.dtype)
    return vectors @ p.T if p.ndim == 2 else vectors * p


def _listed_graph(senders, receivers, mask, positions, cell) -> graph.Graph:
    """The pairs of a JAX-MD list as a graph without image shifts (species all 0)."""
    zero = jnp.zeros((), jnp.int32)
    edges = graph.Neighbors(
        senders.astype(jnp.int32), receivers.astype(jnp.int32),
        jnp.zeros((senders.shape[0], 3), jnp.int32), mask, zero, zero,
    )
    return graph.single_graph(jnp.zeros(positions.shape[0], jnp.int32), positions, cell, edges)


# ---------------------------------------------------------------------------------------------
# JAX-MD's neighbour list


def _jax_md_backend(potential, model, box, fractional, skin, format, multiplier, no_cells,
                    n_atoms):
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
    periodic = box is not None
    if not periodic:
        if fractional:
            raise ValueError("fractional coordinates need a box")
        displacement, shift = space.free()
        nbr_box, no_cells = 1.0, True
    else:
        h = cell_heights(box.T)
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

    def frame(R, kwargs):
        """Cartesian positions and the ASE cell (rows) the displacement of JAX-MD would use;
        fractional positions keep JAX-MD's real-space gradients (``space.transform``)."""
        if not periodic:
            return R, jnp.zeros((3, 3), R.dtype)
        b = jnp.asarray(kwargs.get("box", nbr_box), R.dtype)
        new = kwargs.get("new_box")
        if fractional:
            eff = b if new is None else jnp.asarray(new, R.dtype)
            return space.transform(eff, R), eff.T
        if new is None:
            return R, b.T
        new = jnp.asarray(new, R.dtype)
        return space.transform(new, space.transform(space.inverse(b), R)), new.T

    def listed(R, neighbor, kwargs):
        """(graph of the listed pairs with minimum-image shifts, ordered, capacity)."""
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
        positions, cell = frame(R, kwargs)
        g = _listed_graph(senders, receivers, mask, positions, cell)
        if periodic:  # the minimum image of every listed pair, from fractional differences
            lattice = jax.lax.stop_gradient(cell)
            frac = jax.lax.stop_gradient(positions) @ jnp.linalg.inv(lattice)
            direct = _listed_graph(senders, receivers, mask, frac, jnp.eye(3, dtype=frac.dtype))
            d = direct.edge_vectors()  # s_j - s_i
            shifts = -jnp.round(d)
            g = g.with_edges(g.senders, g.receivers, shifts.astype(jnp.int32), mask)
            vectors = (d + shifts) @ lattice  # = g.edge_vectors(), without a second gather
        else:
            vectors = jax.lax.stop_gradient(g.edge_vectors())
        if "perturbation" in kwargs:
            g = _perturbed(g, kwargs["perturbation"])
            vectors = _perturbed_vectors(vectors, kwargs["perturbation"])
        n_listed = senders.shape[0]  # more slots than listed pairs would only cost time
        capacity = min(capacity_bucket(n_listed * ratio), n_listed)
        if n_listed >= n * (n - 1):  # every pair listed (small systems): no growing possible
            capacity = n_listed
        return g, ordered, capacity, jax.lax.stop_gradient(vectors)

    def count_within(R, neighbor, kwargs):
        """(edges within the cutoff now, model slots, listed pairs, coincident) of a list."""
        g, _, capacity, vectors = listed(R, neighbor, kwargs)
        within, coincident = graph.within_cutoff(g, cutoff, vectors)
        return jnp.sum(within, dtype=jnp.int32), capacity, g.senders.shape[0], coincident

    def flagged(R, nbrs, kwargs):
        """``nbrs`` with the model-slot check at R in its error code, and this module's update
        function (so that ``nbrs.update(R)`` checks it too). Atoms at one position cannot be
        coded in jax-md's error (it knows four codes): they make the energy NaN, which
        :func:`run_chunk` reports, and are refused at allocation."""
        count, capacity, _, _ = count_within(R, nbrs, kwargs)
        error = nbrs.error.update(partition.PEC.NEIGHBOR_LIST_OVERFLOW, count > capacity)
        return dataclasses.replace(nbrs, error=error, update_fn=update)

    count_jit = jax.jit(count_within)
    flagged_jit = jax.jit(flagged)

    def allocate(R, extra_capacity: int = 0, **kwargs):
        """Host: jax-md's allocation, with room for the model's edges within the cutoff."""
        R = _checked_positions(R, n_atoms)

        def run(extra):
            nbrs = _plain_static_fields(fns.allocate(R, extra, **kwargs))
            return nbrs, count_jit(R, nbrs, kwargs)

        def short(result):
            count, capacity, n_listed, _ = result[1]
            enough = capacity >= min(int(count) * MODEL_HEADROOM, n_listed)
            return 0 if enough else int(GraphError.MODEL_SLOTS)

        def more(extra, result, code):
            count, _, n_listed, _ = result[1]
            need = int(count) * MODEL_HEADROOM
            return extra + int(np.ceil((need / ratio - n_listed) / max(R.shape[0], 1))) + 1

        (nbrs, (_, _, _, coincident)), _ = graph.fit(
            run, extra_capacity, more, error=short, what="JAX-MD neighbour list", attempts=16
        )
        if bool(coincident):
            problem = graph.describe(GraphError.COINCIDENT)
            raise ValueError(f"invalid structure at allocation: {problem}")
        return flagged_jit(R, nbrs, kwargs)

    def update(R, neighbors, **kwargs):
        nbrs = fns.update(R, _plain_static_fields(neighbors), **kwargs)
        return flagged(R, nbrs, kwargs)

    neighbor_fn = partition.NeighborListFns(allocate, update)

    def energy_fn(R, neighbor, **kwargs):
        """Energy (eV) of positions R (N, 3) with a JAX-MD neighbour list ``neighbor``."""
        g, ordered, capacity, vectors = listed(R, neighbor, kwargs)
        return model(g, capacity, ordered, vectors)

    def member_energy_fn(R, neighbor, **kwargs):
        g, ordered, capacity, vectors = listed(R, neighbor, kwargs)
        return model.members(g, capacity, ordered, vectors)

    return MDFunctions(energy_fn, neighbor_fn, displacement, shift, box, member_energy_fn)



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
# jat's neighbour list: jat.graph.SkinList


@dataclasses.dataclass(frozen=True)
class JatNeighborFns:
    """``allocate(R, box=None)`` (host: fits static sizes, builds) and ``update(R, nbrs)``."""

    allocate: Callable[..., graph.SkinList]
    update: Callable[..., graph.SkinList]

    def __call__(self, R, neighbors=None, **kwargs):
        return self.allocate(R, **kwargs) if neighbors is None else self.update(R, neighbors,
                                                                                **kwargs)


def _jat_backend(potential, model, box, skin, n_atoms):
    periodic = box is not None
    pbc = (periodic,) * 3

    def current_cell(R, kwargs):
        """The ASE cell (rows) of the box given as ``new_box``/``box``, else the system's."""
        if not periodic:
            return jnp.zeros((3, 3), R.dtype)
        b = kwargs.get("new_box", kwargs.get("box"))
        return jnp.asarray(box if b is None else b, R.dtype).T

    def allocate(R, extra_capacity: int = 0, **kwargs) -> graph.SkinList:
        """Host: fits the static sizes to R; ``extra_capacity`` more model slots per atom."""
        R = jnp.asarray(_checked_positions(R, n_atoms))
        cell = np.asarray(current_cell(R, kwargs), np.float64)
        if periodic:
            check_cell(cell, pbc)
        nbrs = graph.allocate_skin(
            R, potential.cutoff, cell=cell if periodic else None, pbc=pbc, skin=skin,
            extra_slots=extra_capacity * n_atoms,
        )
        nbrs = _update_jit(nbrs, R, current_cell(R, kwargs))
        _raise_if_invalid(nbrs, "at allocation")
        return nbrs

    def update(R, neighbors: graph.SkinList, **kwargs) -> graph.SkinList:
        return neighbors.update(R, current_cell(R, kwargs))

    def listed(R, neighbor, kwargs):
        g = neighbor.full_graph(R, current_cell(R, kwargs))
        if "perturbation" in kwargs:
            g = _perturbed(g, kwargs["perturbation"])
        return g

    def energy_fn(R, neighbor: graph.SkinList, **kwargs):
        """Energy (eV) of Cartesian positions R (N, 3) with a jat neighbour list."""
        return model(listed(R, neighbor, kwargs), neighbor.capacity)

    def member_energy_fn(R, neighbor: graph.SkinList, **kwargs):
        return model.members(listed(R, neighbor, kwargs), neighbor.capacity)

    def displacement(Ra, Rb, **kwargs):
        d = Ra - Rb
        if periodic:
            b = current_cell(d, kwargs).T
            frac = jnp.linalg.solve(b, d)
            d = b @ (frac - jnp.round(frac))
        if "perturbation" in kwargs:
            p = jnp.asarray(kwargs["perturbation"])
            d = d * p if p.ndim < 2 else d @ p.T
        return d

    def shift(R, dR, **kwargs):  # unwrapped: the list's shifts stay valid
        return R + dR

    return MDFunctions(
        energy_fn, JatNeighborFns(allocate, update), displacement, shift, box, member_energy_fn
    )


@jax.jit
def _update_jit(nbrs: graph.SkinList, R, cell) -> graph.SkinList:
    return nbrs.update(R, cell)


def _checked_positions(R, n_atoms: int) -> np.ndarray:
    """Host check of positions handed to an allocation (shape (N, 3), finite)."""
    arr = np.asarray(R)
    if arr.shape != (n_atoms, 3):
        raise ValueError(f"positions must have shape ({n_atoms}, 3), got {arr.shape}")
    check_positions(arr)
    return R


# ---------------------------------------------------------------------------------------------
# Errors of either list, and running: jitted chunks of steps, overflow handled on the host


def list_error(nbrs) -> int:
    """The :class:`jat.graph.GraphError` bits of a jat or a jax-md neighbour list (host)."""
    if isinstance(nbrs, graph.SkinList):
        return graph.error_bits(nbrs.error)
    # jax-md's own overflow bits; its MALFORMED_BOX bit is set for valid boxes with fractional
    # coordinates (jax-md 0.2), so, as jax-md's did_buffer_overflow, it is not read
    return int(GraphError.EDGES) if bool(nbrs.did_buffer_overflow) else 0


def _raise_if_invalid(nbrs, when: str) -> None:
    code = list_error(nbrs)
    if code & int(INPUT):
        raise ValueError(f"invalid structure {when}: {graph.describe(code)}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GuardRecord:
    """What a guarded chunk saw: ``hit`` whether the largest per-atom force σ passed the
    threshold, at chunk step ``step`` (from 0), atom ``atom`` with σ ``value`` (eV/Å, the first
    passing), ``checks`` how many steps were checked, ``largest`` the largest σ checked."""

    hit: jax.Array
    step: jax.Array
    atom: jax.Array
    value: jax.Array
    checks: jax.Array
    largest: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Guarded:
    """The observation of a guarded chunk: the user's ``observation`` and the ``guard`` record."""

    observation: Any
    guard: GuardRecord


@dataclasses.dataclass(frozen=True)
class GuardedChunk:
    """A chunk with an uncertainty guard (from :func:`make_chunk`); call it like a chunk."""

    fn: Callable
    guard: Guard
    steps: int

    def __call__(self, state, nbrs):
        return self.fn(state, nbrs)


def make_chunk(
    apply_fn: Callable,
    steps: int,
    observe: Callable | None = None,
    *,
    guard: Guard | float | None = None,
    uncertainty_fn: Callable | None = None,
    check_every: int = 10,
) -> Callable:
    """A jitted ``chunk(state, nbrs) -> (state, nbrs, observation)`` advancing ``steps`` steps.

    ``apply_fn(state, neighbor=nbrs)`` is a JAX-MD integrator step (``simulate.nve``'s apply,
    ...); the list is updated to the new positions after every step, so its overflow flag
    covers every position the forces were evaluated at. ``observe(state, nbrs)`` (traced) is
    evaluated at the end of the chunk; without it the observation is None.

    With a committee's ``uncertainty_fn`` (``MDFunctions.uncertainty_fn``) and a ``guard``
    (:class:`jat.uncertainty.Guard`, or its ``max_force_std`` in eV/Å), every ``check_every``-th
    step also evaluates the members' force σ (K extra backward passes: about
    1 + 1/check_every times the cost of the steps); a "stop" guard freezes the state at the
    first step whose largest per-atom σ passes the threshold, and :func:`run_chunk` raises
    :class:`jat.uncertainty.UncertaintyError` there. The observation is then a :class:`Guarded`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guard is None:
        if uncertainty_fn is not None:
            raise ValueError("uncertainty_fn is only used with a guard")

        @jax.jit
        def chunk(state, nbrs):
            def step(_, carry):
                state, nbrs = carry
                state = apply_fn(state, neighbor=nbrs)
                return state, nbrs.update(state.position)

            state, nbrs = jax.lax.fori_loop(0, steps, step, (state, nbrs))
            return state, nbrs, (None if observe is None else observe(state, nbrs))

        return chunk

    if not isinstance(guard, Guard):
        guard = Guard(guard)
    if uncertainty_fn is None:
        raise ValueError(
            "a guard needs the committee's uncertainty_fn (MDFunctions.uncertainty_fn; a single "
            "potential has none)"
        )
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    threshold = guard.max_force_std
    stop = guard.action == "stop"

    @jax.jit
    def guarded(state, nbrs):
        dt = state.position.dtype

        def advance(carry):
            state, nbrs = carry
            state = apply_fn(state, neighbor=nbrs)
            return state, nbrs.update(state.position)

        def check(carry):
            state, nbrs = carry
            per_atom = uncertainty_fn(state.position, neighbor=nbrs)["atom_force_std"]
            atom = jnp.argmax(per_atom).astype(jnp.int32)
            return per_atom[atom].astype(dt), atom

        def step(i, carry):
            state, nbrs, rec = carry
            frozen = rec.hit & stop
            state, nbrs = jax.lax.cond(frozen, lambda c: c, advance, (state, nbrs))
            due = ((i + 1) % check_every == 0) & ~frozen
            value, atom = jax.lax.cond(
                due, check, lambda c: (jnp.zeros((), dt), jnp.zeros((), jnp.int32)),
                (state, nbrs),
            )
            first = due & (value > threshold) & ~rec.hit
            rec = GuardRecord(
                hit=rec.hit | first,
                step=jnp.where(first, i, rec.step),
                atom=jnp.where(first, atom, rec.atom),
                value=jnp.where(first, value, rec.value),
                checks=rec.checks + due.astype(jnp.int32),
                largest=jnp.maximum(rec.largest, value),
            )
            return state, nbrs, rec

        zero_i = jnp.zeros((), jnp.int32)
        rec = GuardRecord(
            jnp.zeros((), bool), zero_i, zero_i, jnp.zeros((), dt), zero_i, jnp.zeros((), dt)
        )
        state, nbrs, rec = jax.lax.fori_loop(0, steps, step, (state, nbrs, rec))
        observation = None if observe is None else observe(state, nbrs)
        return state, nbrs, Guarded(observation, rec)

    return GuardedChunk(guarded, guard, steps)


def run_chunk(
    chunk: Callable, state, nbrs, neighbor_fn, max_retries: int = 8, first_step: int = 0
):
    """Host: one ``chunk`` (from :func:`make_chunk`) that never keeps a result it cannot trust.

    If the list (or the model's edge slots) overflowed during the chunk, the result is dropped,
    the list is allocated again where the chunk ended (room for the denser configuration; at its
    start if the end is not finite; with 2 more slots per atom at each further attempt), brought
    back to the chunk's start positions, and the chunk is redone (:func:`jat.graph.fit`). Two
    atoms at one position, or positions that are no longer finite, raise RuntimeError: the
    dynamics has failed, and no re-allocation can help.

    A guarded chunk whose "stop" guard fired raises :class:`jat.uncertainty.UncertaintyError`
    naming the step (``first_step`` + the step in the chunk), the atom and its force σ, with
    the state where it stopped as the error's ``state``.

    Returns (state, nbrs, observation, reallocations).
    """
    attempts = [0]

    def run(lst):
        return chunk(state, lst)

    def error(result):
        code = list_error(result[1])
        if not code and not bool(jnp.all(jnp.isfinite(result[0].position))):
            code = int(GraphError.INVALID)
        return code

    def regrow(lst, result, code):
        attempts[0] += 1
        at = result[0].position
        if not bool(jnp.all(jnp.isfinite(at))):  # NaN forces after a model-slot overflow
            at = state.position
        fresh = neighbor_fn.allocate(at, extra_capacity=2 * (attempts[0] - 1))
        return neighbor_fn.update(state.position, fresh)

    (new_state, new_nbrs, observation), _ = graph.fit(
        run, nbrs, regrow, error=error, what="the MD chunk's neighbour list",
        attempts=max_retries + 1,
    )
    code = error((new_state, new_nbrs, observation))
    if code & int(INPUT):
        raise RuntimeError(
            f"the MD chunk cannot continue: {graph.describe(code)}; the system is collapsing or "
            "exploding (check the time step, the temperature and the potential)"
        )
    if isinstance(chunk, GuardedChunk) and chunk.guard.action == "stop":
        rec = jax.device_get(observation.guard)
        if bool(rec.hit):
            err = UncertaintyError(
                first_step + int(rec.step), int(rec.atom), float(rec.value),
                chunk.guard.max_force_std, "JAX-MD, ",
            )
            err.state = new_state
            raise err
    return new_state, new_nbrs, observation, attempts[0]


# ---------------------------------------------------------------------------------------------
# From ASE Atoms


@dataclasses.dataclass(frozen=True)
class MDSystem:
    """A structure ready for JAX-MD (see :func:`jax_md_system`).

    positions: (N, 3) initial R (fractional if ``fractional``, else Cartesian Å, in the rotated
    frame); masses: (N,) amu; species: (N,) element symbols; box: JAX-MD box (columns are
    lattice vectors) or None; rotation Q: rotated = original @ Q.T (identity if not rotated);
    energy_fn, neighbor_fn, displacement_fn, shift_fn, member_energy_fn and uncertainty_fn
    (committees; forces and σ in the rotated frame) as in :class:`MDFunctions`.
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
    member_energy_fn: Callable[..., jax.Array] | None = None
    uncertainty_fn: Callable[..., dict[str, jax.Array]] | None = None

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

    The structure is checked as by ``Potential.compute``. A periodic cell that is not lower
    triangular is first rotated into standard form (JAX-MD's cell list needs an upper-triangular
    box); ``system.rotation`` maps back. Positions are Cartesian (Å, wrapped into the cell or
    centred in free space, so float32 keeps their precision) unless ``fractional``; keyword
    arguments go to :func:`jax_md_energy_fn`.
    """
    pbc = np.asarray(atoms.get_pbc(), bool)
    if pbc.any() and not pbc.all():
        raise ValueError(f"JAX-MD needs pbc all True or all False, got {pbc.tolist()}")
    structure_arrays(potential.species_table, atoms)  # the checks every evaluation path makes
    rotation = np.eye(3)
    box = None
    if pbc.all():
        atoms, rotation = standard_form(atoms)
        box = box_from_cell(atoms.cell.array)
    positions = reduce_positions(atoms.get_positions(), atoms.cell.array, tuple(pbc))
    if fractional and box is not None:
        positions = positions @ np.linalg.inv(atoms.cell.array)
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
        member_energy_fn=fns.member_energy_fn,
        uncertainty_fn=fns.uncertainty_fn,
    )


__all__ = [
    "DEFAULT_SKIN",
    "Guarded",
    "GuardedChunk",
    "GuardRecord",
    "JatNeighborList",
    "MDFunctions",
    "MDSystem",
    "box_from_cell",
    "cell_from_box",
    "jax_md_energy_fn",
    "jax_md_system",
    "list_error",
    "make_chunk",
    "run_chunk",
    "standard_form",
    "uncertainty",
]
