"""Generate the built-in training set: GFN2-xTB Langevin MD of a periodic ethylammonium nitrate box.

The box holds ``--pairs`` ion pairs of ethylammonium nitrate (EAN) at the experimental density
(1.21 g/cm³). Cations ``N H H H C H H C H H H`` come first, then anions ``N O O O`` (the atom order
of :mod:`jat.data.ean`). The ions are built with standard bond lengths, placed on a cubic lattice
with random orientations, relaxed briefly and then run with Langevin dynamics; every
``--stride``-th MD step the energy (eV), forces (eV/Å) and stress (eV/Å³) are recorded and written
as extended XYZ.

The reference method is GFN2-xTB from ``tblite`` (``pip install tblite``), which is NOT a
dependency of jat: it is needed only to regenerate the data. The output is deterministic for a
given seed when run single-threaded::

    OMP_NUM_THREADS=1 python examples/make_builtin_data.py
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np
from xtb_labels import frozen, gfn2_calculator, import_tblite

DENSITY_G_CM3 = 1.21  # experimental density of EAN at room temperature
MIN_INTER_DIST = 1.7  # Å, minimum distance between atoms of different ions in the start box
AVOGADRO = 6.02214076e23
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "jat" / "data" / "builtin" / "ean_xtb.extxyz"

CATION_SYMBOLS = "NHHHCHHCHHH"
ANION_SYMBOLS = "NOOO"

# Covalent-bond cutoffs (Å) used to check the topology of the saved frames. O-H is kept short so
# that the strong N-H...O hydrogen bonds of EAN (H...O down to ~1.3 Å at 450 K) do not count as
# bonds; a proton transferred to nitrate (O-H ~1.0 Å) does.
BOND_CUTOFF = {
    frozenset("CH"): 1.35,
    frozenset("NH"): 1.35,
    frozenset("OH"): 1.20,
    frozenset("CC"): 1.85,
    frozenset("CN"): 1.85,
    frozenset("NO"): 1.60,
    frozenset("CO"): 1.70,
    frozenset("OO"): 1.60,
    frozenset("NN"): 1.60,
    frozenset("HH"): 0.90,
}


def _tetrahedral(u: np.ndarray, phase: float) -> list[np.ndarray]:
    """Three unit vectors at the tetrahedral angle from ``u``, spaced 120° about it."""
    u = u / np.linalg.norm(u)
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    theta = math.acos(-1.0 / 3.0)
    return [
        math.cos(theta) * u
        + math.sin(theta) * (math.cos(phase + k * 2 * math.pi / 3) * e1
                             + math.sin(phase + k * 2 * math.pi / 3) * e2)
        for k in range(3)
    ]


def _staggered(centre: np.ndarray, u: np.ndarray, avoid: list[np.ndarray]) -> list[np.ndarray]:
    """Tetrahedral directions about ``u`` rotated to stay as far as possible from ``avoid``."""
    return max(
        (_tetrahedral(u, p) for p in np.linspace(0, 2 * math.pi / 3, 25)),
        key=lambda ds: min(np.linalg.norm(centre + v - a) for v in ds for a in avoid),
    )


def ethylammonium() -> np.ndarray:
    """Staggered C2H5NH3+ positions (Å) in the order N H H H C H H C H H H, centred on the COM."""
    d_nh, d_cn, d_cc, d_ch = 1.03, 1.50, 1.52, 1.09
    n = np.zeros(3)
    ca = np.array([0.0, 0.0, d_cn])
    h_n = [n + d_nh * v for v in _tetrahedral(ca - n, 0.0)]
    # substituents of C-alpha (C-beta first), staggered with respect to the NH3 group
    dirs_a = _staggered(ca, n - ca, h_n)
    cb = ca + d_cc * dirs_a[0]
    h_a = [ca + d_ch * v for v in dirs_a[1:]]
    # methyl hydrogens, staggered with respect to C-alpha's substituents
    h_b = [cb + d_ch * v for v in _staggered(cb, ca - cb, [n, *h_a])]
    pos = np.array([n, *h_n, ca, *h_a, cb, *h_b])
    return pos - _com(CATION_SYMBOLS, pos)


def nitrate() -> np.ndarray:
    """Planar NO3- positions (Å) in the order N O O O, centred on N."""
    d_no = 1.25
    angles = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    return np.array([[0.0, 0.0, 0.0]] + [[d_no * math.cos(a), d_no * math.sin(a), 0.0]
                                          for a in angles])


def _com(symbols: str, pos: np.ndarray) -> np.ndarray:
    from ase.data import atomic_masses, atomic_numbers

    m = np.array([atomic_masses[atomic_numbers[s]] for s in symbols])
    return (m[:, None] * pos).sum(0) / m.sum()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def box_length(pairs: int) -> float:
    """Cubic box edge (Å) for ``pairs`` ion pairs of EAN at the experimental density."""
    from ase.data import atomic_masses, atomic_numbers

    mass = sum(atomic_masses[atomic_numbers[s]] for s in CATION_SYMBOLS + ANION_SYMBOLS)
    volume_per_pair = mass / DENSITY_G_CM3 / AVOGADRO * 1e24  # Å³
    return (pairs * volume_per_pair) ** (1.0 / 3.0)


def _min_image_dist(a: np.ndarray, b: np.ndarray, length: float) -> float:
    d = a[:, None, :] - b[None, :, :]
    d -= length * np.round(d / length)
    return float(np.sqrt((d**2).sum(-1)).min())


def build_box(pairs: int, rng: np.random.Generator, max_tries: int = 2000):
    """Ion pairs on a cubic lattice (cations and anions alternating), random orientations."""
    from ase import Atoms

    length = box_length(pairs)
    n_ions = 2 * pairs
    k = math.ceil(n_ions ** (1.0 / 3.0) - 1e-9)
    sites = np.array(list(itertools.product(range(k), repeat=3)), dtype=float)
    # rock-salt-like alternation: even-parity sites for cations, odd for anions
    parity = sites.sum(1).astype(int) % 2
    even, odd = np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)
    rng.shuffle(even)
    rng.shuffle(odd)
    if len(even) < pairs or len(odd) < pairs:  # odd k: fall back to any sites
        order = rng.permutation(len(sites))
        cat_sites, an_sites = order[:pairs], order[pairs:n_ions]
    else:
        cat_sites, an_sites = even[:pairs], odd[:pairs]
    spacing = length / k
    centres = (sites + 0.5) * spacing
    templates = [(ethylammonium(), cat_sites), (nitrate(), an_sites)]

    placed: list[np.ndarray] = []
    blocks: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for kind, (template, site_ids) in enumerate(templates):
        for site in site_ids:
            for _ in range(max_tries):
                jitter = rng.uniform(-0.3, 0.3, 3)
                pos = template @ _random_rotation(rng).T + centres[site] + jitter
                if all(_min_image_dist(pos, other, length) >= MIN_INTER_DIST for other in placed):
                    break
            else:
                raise RuntimeError(
                    f"could not place ion {len(placed) + 1} without overlaps in a "
                    f"{length:.2f} Å box after {max_tries} tries; try another --seed"
                )
            placed.append(pos)
            blocks[kind].append(pos)
    positions = np.concatenate(blocks[0] + blocks[1])
    symbols = CATION_SYMBOLS * pairs + ANION_SYMBOLS * pairs
    atoms = Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)
    atoms.wrap()
    return atoms


def molecule_ids(pairs: int) -> np.ndarray:
    """Index of the ion that each atom belongs to in the reference (built) topology."""
    cat = np.repeat(np.arange(pairs), len(CATION_SYMBOLS))
    an = np.repeat(np.arange(pairs, 2 * pairs), len(ANION_SYMBOLS))
    return np.concatenate([cat, an])


def bonds(atoms) -> set[tuple[int, int]]:
    """Covalent bonds (minimum image) from the element-pair cutoffs in ``BOND_CUTOFF``."""
    d = atoms.get_all_distances(mic=True)
    sym = atoms.get_chemical_symbols()
    out = set()
    n = len(atoms)
    for i in range(n):
        for j in range(i + 1, n):
            if d[i, j] < BOND_CUTOFF[frozenset(sym[i] + sym[j])]:
                out.add((i, j))
    return out


def topology_report(atoms, reference: set[tuple[int, int]], pairs: int) -> list[str]:
    """Describe every bond gained or lost relative to ``reference`` (empty list: intact)."""
    now = bonds(atoms)
    mol = molecule_ids(pairs)
    sym = atoms.get_chemical_symbols()
    lines = []
    for kind, diff in (("broken", reference - now), ("new", now - reference)):
        for i, j in sorted(diff):
            where = "intra-ion" if mol[i] == mol[j] else f"between ions {mol[i]} and {mol[j]}"
            lines.append(f"{kind} bond {sym[i]}{i}-{sym[j]}{j} ({where})")
    return lines


def ammonium_contacts(atoms, pairs: int) -> tuple[float, float]:
    """Longest N-H bond of the NH3+ groups and shortest contact of those H atoms to an O (Å)."""
    d = atoms.get_all_distances(mic=True)
    oxygens = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "O"]
    n_h, h_o = [], []
    for c in range(pairs):
        n = c * len(CATION_SYMBOLS)
        for h in (n + 1, n + 2, n + 3):
            n_h.append(d[h, n])
            h_o.append(d[h, oxygens].min())
    return max(n_h), min(h_o)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="ion pairs in the box (default 3)")
    p.add_argument("--frames", type=int, default=32, help="frames to save (default 32)")
    p.add_argument("--stride", type=int, default=20,
                   help="MD steps between saved frames (default 20 = 10 fs)")
    p.add_argument("--temperature", type=float, default=450.0, help="Langevin temperature, K")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="extended XYZ to write")
    p.add_argument("--timestep", type=float, default=0.5, help="MD time step, fs (default 0.5)")
    p.add_argument("--friction", type=float, default=0.02,
                   help="Langevin friction, 1/fs (default 0.02)")
    p.add_argument("--relax-steps", type=int, default=20,
                   help="at most this many FIRE steps before the MD (default 20, fmax 0.5 eV/Å)")
    p.add_argument("--equilibration", type=int, default=100,
                   help="MD steps run before the first saved frame (default 100 = 50 fs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import_tblite()  # exits with the installation hint when tblite is missing
    from importlib.metadata import version

    from ase import units
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary
    from ase.optimize import FIRE

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    rng = np.random.default_rng(args.seed)
    atoms = build_box(args.pairs, rng)
    reference_bonds = bonds(atoms)
    length = atoms.cell[0, 0]
    print(f"EAN box: {args.pairs} ion pairs, {len(atoms)} atoms, L = {length:.3f} Å "
          f"({DENSITY_G_CM3} g/cm³), seed {args.seed}; tblite {version('tblite')} GFN2-xTB",
          flush=True)

    atoms.calc = gfn2_calculator()
    t0 = time.perf_counter()
    e0 = atoms.get_potential_energy()
    print(f"first single point: E = {e0:.3f} eV, {time.perf_counter() - t0:.2f} s", flush=True)

    opt = FIRE(atoms, logfile=None)
    opt.run(fmax=0.5, steps=args.relax_steps)
    fmax = np.abs(atoms.get_forces()).max()
    print(f"relaxed {opt.get_number_of_steps()} FIRE steps: E = {atoms.get_potential_energy():.3f}"
          f" eV, max |F| component {fmax:.2f} eV/Å", flush=True)
    problems = topology_report(atoms, reference_bonds, args.pairs)
    if problems:
        print("warning: topology changed during relaxation:\n  " + "\n  ".join(problems))

    # Maxwell-Boltzmann momenta (written out: the ASE helper was renamed in 3.29)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.sqrt(masses * units.kB * args.temperature)
                      * rng.standard_normal((len(atoms), 3)))
    Stationary(atoms)
    # fixcm=False: the deprecated centre-of-mass fix biases NVT sampling in small boxes; the
    # centre of mass of the periodic box just diffuses a little.
    dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / units.fs, fixcm=False, rng=rng)
    t0 = time.perf_counter()
    dyn.run(args.equilibration)
    print(f"equilibrated {args.equilibration} steps ({args.equilibration * args.timestep:.0f} fs)"
          f": T = {atoms.get_temperature():.0f} K, {time.perf_counter() - t0:.1f} s", flush=True)

    frames = []
    temps = []
    t_md = time.perf_counter()
    for k in range(args.frames):
        dyn.run(args.stride)
        frame = frozen(atoms)
        frames.append(frame)
        temps.append(atoms.get_temperature())
        if (k + 1) % 25 == 0 or k + 1 == args.frames:
            elapsed = time.perf_counter() - t_md
            t_fs = (k + 1) * args.stride * args.timestep
            print(f"frame {k + 1}/{args.frames}: t = {t_fs:.0f} fs,"
                  f" T = {temps[-1]:.0f} K, E = {frame.get_potential_energy():.3f} eV, "
                  f"{elapsed:.0f} s", flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write(args.output, frames, format="extxyz")

    energies = np.array([f.get_potential_energy() for f in frames])
    forces = np.concatenate([f.get_forces() for f in frames])
    stresses = np.array([f.get_stress() for f in frames])
    print("\nsummary")
    print(f"  output        {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    print(f"  frames        {len(frames)}, {len(atoms)} atoms each, cubic L = {length:.3f} Å")
    print(f"  spacing       {args.stride} steps x {args.timestep} fs = "
          f"{args.stride * args.timestep:g} fs; mean T = {np.mean(temps):.0f} K "
          f"(target {args.temperature:g} K)")
    print(f"  energy        {energies.min():.3f} .. {energies.max():.3f} eV "
          f"(range {np.ptp(energies):.3f} eV, {np.ptp(energies) / len(atoms) * 1e3:.1f} meV/atom)")
    print(f"  forces        mean |F| {np.linalg.norm(forces, axis=1).mean():.3f} eV/Å, "
          f"RMS component {np.sqrt((forces**2).mean()):.3f} eV/Å, "
          f"max component {np.abs(forces).max():.3f} eV/Å")
    print(f"  pressure      {-stresses[:, :3].mean() / units.GPa:.2f} GPa (mean)")
    for name, frame in (("first", frames[0]), ("last", frames[-1])):
        problems = topology_report(frame, reference_bonds, args.pairs)
        state = "intact" if not problems else "CHANGED:\n    " + "\n    ".join(problems)
        print(f"  topology      {name} frame {state}")
    contacts = np.array([ammonium_contacts(f, args.pairs) for f in frames])
    print(f"  N-H...O       longest ammonium N-H {contacts[:, 0].max():.2f} Å, shortest H...O "
          f"{contacts[:, 1].min():.2f} Å (over all frames)")
    changed = sum(bool(topology_report(f, reference_bonds, args.pairs)) for f in frames)
    print(f"  frames with changed topology: {changed}/{len(frames)}")
    print(f"  time          {time.perf_counter() - t_start:.0f} s wall, "
          f"{time.process_time() - cpu_start:.0f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
