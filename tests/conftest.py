"""Shared fixtures and structure generators for the jat physics tests.

Compiled functions are cached inside each :class:`jat.Potential`, so potentials are built once per
test session (per xdist worker) through :func:`potential` and reused everywhere.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

# XLA's optimisation passes cost more compile time than they save at test sizes (a tiny training
# run: 23 s -> 15 s without them); the default here, inherited by the tests' subprocesses.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite against fully optimised code.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list

import jat
from jat.data import data_dir, read_ean

if os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1":  # also where a plugin imported jax first
    jax.config.update("jax_disable_most_optimizations", True)


def _enable_compilation_cache() -> None:
    """Keep compiled XLA code between runs, when asked: ``JAT_TEST_JAX_CACHE=1``.

    Off by default. Loading cached training steps back crashed test processes (segmentation
    fault or abort inside ``jax._src.compilation_cache``) on jax 0.10.2, in a clean CI run
    too. Where it is on, the cache lives in the system temporary directory (never in the
    repository), one directory per xdist worker, since JAX writes an entry in place, not
    atomically; ``JAX_COMPILATION_CACHE_DIR`` puts it elsewhere.
    """
    if os.environ.get("JAT_TEST_JAX_CACHE", "0") != "1" or jax.config.jax_compilation_cache_dir:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    jax.config.update(
        "jax_compilation_cache_dir", str(Path(tempfile.gettempdir()) / "jat-jax-cache" / worker)
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


_enable_compilation_cache()

SPECIES = ("H", "C", "N", "O")
CUTOFF = 3.5  # Å, for the small synthetic structures
EAN_CUTOFF = 5.0  # Å
MODELS = ("jat", "schnet")

# Small models for fast tests: JAT width 16, 2 layers, 2 heads; SchNet 16 features, 2 blocks;
# PaiNN (tests/test_painn.py) 16 features, 2 interactions, 8 radial functions.
SMALL = {
    "jat": (("width", 16), ("layers", 2), ("heads", 2)),
    "schnet": (("features", 16), ("interactions", 2)),
    "painn": (("features", 16), ("interactions", 2), ("num_rbf", 8)),
}


@functools.cache
def _potential(model, dtype, cutoff, extra):
    kwargs = dict(SMALL[model])
    kwargs.update(extra)
    return jat.Potential.create(model, SPECIES, cutoff, seed=1, dtype=dtype, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module: a worker runs hundreds of
    modules' programs, and keeping all of them grew a worker past 5 GB."""
    yield
    jax.clear_caches()


@pytest.fixture
def x64():
    """float64 for the tests that call the JAX functions directly (Potentials set their own)."""
    with jax.enable_x64(True):
        yield


def potential(model: str, dtype: str = "float64", cutoff: float = CUTOFF, **extra) -> jat.Potential:
    """A small random-parameter potential, cached for the session (same arguments, same object)."""
    return _potential(model, dtype, float(cutoff), tuple(sorted(extra.items())))


# ---------------------------------------------------------------------------------------------
# Tests that reuse the same compiled functions run on the same xdist worker


def pytest_sessionstart(session):
    """CI sets ``JAT_REQUIRE_JAX_MD=1``: then the JAX-MD tests must run, not skip."""
    if os.environ.get("JAT_REQUIRE_JAX_MD") == "1":
        try:
            import jax_md  # noqa: F401
        except ImportError as err:
            raise pytest.UsageError(
                f"JAT_REQUIRE_JAX_MD=1 but jax-md is not installed ({err}): pip install -e "
                '".[test]"'
            ) from None


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compile_group(name): run on the same xdist worker as other tests of the group; the "
        "name is formatted with the test's parameters, e.g. '{model}-molecule'",
    )
    # "loadgroup" is "load" plus xdist_group; tests without a group are distributed as before.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        mark = item.get_closest_marker("compile_group")
        if mark is not None:
            params = getattr(getattr(item, "callspec", None), "params", {})
            item.add_marker(pytest.mark.xdist_group(mark.args[0].format(**params)))


# ---------------------------------------------------------------------------------------------
# Structures


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _min_distance(atoms: Atoms) -> float:
    if atoms.pbc.any():
        d = neighbor_list("d", atoms, 1.0, self_interaction=False)
        return float(d.min()) if len(d) else np.inf
    if len(atoms) < 2:
        return np.inf
    dist = atoms.get_all_distances()
    return float(dist[np.triu_indices(len(atoms), 1)].min())


def emt_labelled(atoms: Atoms) -> Atoms:
    """``atoms`` with ASE's EMT energy, forces and (fully periodic) stress as single-point
    labels: cheap reference data for training and evaluation tests."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = EMT()
    labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        labels["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **labels)
    return atoms


def rattled_copper_file(directory: Path, n_frames: int) -> Path:
    """``n_frames`` rattled cubic fcc copper cells (4 atoms, seeds 0..n-1) with EMT labels,
    written to ``directory / "cu.extxyz"``: a tiny periodic training set."""
    from ase.build import bulk
    from ase.io import write

    frames = []
    for k in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=k)
        frames.append(emt_labelled(atoms))
    path = Path(directory) / "cu.extxyz"
    write(path, frames)
    return path


def random_symbols(n: int, seed) -> list[str]:
    return list(_rng(seed).choice(SPECIES, size=n))


def random_molecule(n: int = 9, seed: int = 0, box: float = 4.0, min_dist: float = 0.9) -> Atoms:
    """n random atoms in a non-periodic ``box``³ cube, no pair closer than ``min_dist`` Å."""
    rng = _rng(seed)
    pos: list[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pos):
            pos.append(p)
    return Atoms(random_symbols(n, seed), positions=np.array(pos), pbc=False)


def random_cell(seed: int = 0, length: float = 5.0, skew: float = 0.25) -> np.ndarray:
    """A random right-handed triclinic cell (rows are lattice vectors) with edges ≈ ``length``."""
    rng = _rng(seed)
    cell = length * (np.eye(3) + skew * rng.uniform(-1.0, 1.0, (3, 3)))
    if np.linalg.det(cell) < 0:
        cell[[0, 1]] = cell[[1, 0]]
    return cell


def random_crystal(n: int = 8, seed: int = 0, length: float = 5.0, min_dist: float = 0.9) -> Atoms:
    """n random atoms in a random triclinic, fully periodic cell (no periodic image too close)."""
    rng = _rng(seed)
    cell = random_cell(seed, length)
    for _ in range(1000):
        atoms = Atoms(
            random_symbols(n, seed),
            scaled_positions=rng.uniform(0.0, 1.0, (n, 3)),
            cell=cell,
            pbc=True,
        )
        if _min_distance(atoms) >= min_dist:
            return atoms
    raise RuntimeError("could not place atoms")  # pragma: no cover


def random_rotation(seed: int = 0) -> np.ndarray:
    """A random proper orthogonal matrix (det = +1)."""
    q, r = np.linalg.qr(_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ---------------------------------------------------------------------------------------------
# Data


@pytest.fixture(scope="session")
def ean_path():
    """The EAN data file; tests that need it are skipped when it is absent."""
    path = data_dir() / "ean" / "ean_15pairs_dft.jsonl"
    if not path.is_file():
        pytest.skip(f"EAN data not found at {path} (set JAT_DATA_DIR to the data directory)")
    return path


@pytest.fixture(scope="session")
def ean_atoms(ean_path) -> Atoms:
    """The first EAN configuration (225 atoms, cubic 12.9 Å box, periodic)."""
    return read_ean(ean_path, index=0)[0]
