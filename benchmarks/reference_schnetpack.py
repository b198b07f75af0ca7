"""CPU reference throughput of SchNetPack's PyTorch SchNet on the EAN ionic-liquid box.

This is a *reference* figure for jat's JAX SchNet: it times SchNetPack's own model, built as in
SchNetPack's tutorials, on the first EAN configuration (225 atoms, cubic 12.9 Å, periodic).

Model (SchNetPack's standard settings): ``spk.representation.SchNet`` with 128 atom-basis
features (and 128 filters), 3 interactions, 50 Gaussian RBFs, cosine cutoff 5 Å; an ``Atomwise``
energy head and ``Forces`` by autograd, wrapped in ``spk.model.NeuralNetworkPotential`` with
``spk.atomistic.PairwiseDistances`` as input module. Random weights (seed 0), float32, eval mode.

Figures (median over ``repeats`` after a warm-up, wall clock, one process):

* model only: energy + forces (forward + autograd backward) on an input dict that
  ``spk.interfaces.AtomsConverter`` built once (neighbour list precomputed);
* end to end: ``AtomsConverter`` (neighbour list + tensor conversion) + model + copying energy and
  forces back to NumPy, i.e. what ``spk.interfaces.SpkCalculator.calculate`` does per MD step;
* batch of 8: the converter collates 8 copies of the box into one batch; model-only time on it.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/reference_schnetpack.py [--repeats 20] [--data-dir DIR]
        [--neighbor-list matscipy|ase] [--threads N]

The last line printed is one JSON object. Without torch or schnetpack it prints a message and
``{"available": false, ...}`` and exits 0. ``measure(atoms, repeats=20)`` is importable; importing
this module does not import torch.

Compatibility note: torch >= 2.13 renamed ``torch.utils.data.dataloader.T_co`` to ``_T_co``;
every SchNetPack release up to 2.1.1 imports the old name at ``import schnetpack``. If the old
name is missing, this script aliases it (a typing ``TypeVar`` only, no numerical effect) and
reports that under ``"compat_shims"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

EAN_FILE = Path("ean") / "ean_15pairs_dft.jsonl"

# SchNetPack's standard SchNet settings.
N_ATOM_BASIS = 128
N_INTERACTIONS = 3
N_RBF = 50
CUTOFF = 5.0
BATCH = 8
WARMUP = 3

_SHIMS: list[str] = []  # compatibility aliases applied in this process (see module docstring)


def _n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _import_backend() -> tuple[object, object, list[str]]:
    """Import torch and schnetpack; return (torch, spk, shims). Raises ImportError."""
    import torch

    dl = torch.utils.data.dataloader
    if not hasattr(dl, "T_co") and hasattr(dl, "_T_co"):
        dl.T_co = dl._T_co
        _SHIMS.append("torch.utils.data.dataloader.T_co = _T_co")
    import schnetpack as spk
    import schnetpack.transform  # noqa: F401

    return torch, spk, list(_SHIMS)


def backend_status() -> tuple[bool, str]:
    """(available, message) without raising."""
    try:
        torch, spk, _ = _import_backend()
    except Exception as err:  # ImportError, or a broken install raising something else
        return False, f"{type(err).__name__}: {err}"
    return True, f"torch {torch.__version__}, schnetpack {_spk_version(spk)}"


def _spk_version(spk) -> str:
    version = getattr(spk, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import version as dist_version

    return dist_version("schnetpack")


def build_model(torch, spk, seed: int = 0):
    """SchNetPack SchNet energy + forces potential, as in SchNetPack's tutorials."""
    torch.manual_seed(seed)
    schnet = spk.representation.SchNet(
        n_atom_basis=N_ATOM_BASIS,
        n_interactions=N_INTERACTIONS,
        radial_basis=spk.nn.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=schnet,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=N_ATOM_BASIS, output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    )
    return model.to(torch.float32).eval()


def _neighbor_list(spk, name: str):
    if name == "matscipy":
        try:
            import matscipy.neighbours  # noqa: F401
        except ImportError:
            name = "ase"
        else:
            return spk.transform.MatScipyNeighborList(cutoff=CUTOFF), "MatScipyNeighborList"
    if name == "ase":
        return spk.transform.ASENeighborList(cutoff=CUTOFF), "ASENeighborList"
    raise ValueError(f"unknown neighbour list {name!r} (use 'matscipy' or 'ase')")


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _time(fn, repeats: int, warmup: int = WARMUP) -> tuple[list[float], float]:
    """Wall-clock seconds of ``fn()`` for ``repeats`` calls after ``warmup`` untimed calls, and
    the process CPU time / wall time over the timed calls (about ``threads`` when the CPU was
    ours; much less means other processes took the cores)."""
    for _ in range(warmup):
        fn()
    times = []
    c0 = time.process_time()
    w0 = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - w0)
    return times, cpu_per_wall


def _stats(timed: tuple[list[float], float]) -> dict:
    times, cpu_per_wall = timed
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "q1_ms": 1e3 * q[0],
        "q3_ms": 1e3 * q[2],
        "cpu_per_wall": cpu_per_wall,
    }


def measure(
    atoms,
    repeats: int = 20,
    threads: int | None = None,
    neighbor_list: str = "matscipy",
    batch: int = BATCH,
) -> dict:
    """Time SchNetPack SchNet energy + forces on ``atoms`` (an ``ase.Atoms``) on the CPU.

    Returns a dict with the JSON keys documented in the module docstring, plus ``"available"``.
    If torch or schnetpack cannot be imported, returns ``{"available": False, "reason": ...}``.
    ``batch`` <= 1 skips the batched figure (``batch8_structures_per_s`` is then ``None``).
    """
    try:
        torch, spk, shims = _import_backend()
    except Exception as err:
        return {"available": False, "reason": f"{type(err).__name__}: {err}"}
    import ase

    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    threads = threads or _n_cores()
    torch.set_num_threads(threads)

    if type(atoms) is not ase.Atoms:  # AtomsConverter checks the exact type
        atoms = ase.Atoms(
            numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
        )
    nbl, nbl_name = _neighbor_list(spk, neighbor_list)
    converter = spk.interfaces.AtomsConverter(neighbor_list=nbl, dtype=torch.float32, device="cpu")
    model = build_model(torch, spk)

    inputs = converter(atoms)
    n_atoms = int(inputs[spk.properties.n_atoms].sum())
    n_edges = int(inputs[spk.properties.idx_i].shape[0])

    def model_only(inp=inputs):
        # The model writes Rij etc. into its input dict; give it a fresh shallow copy each call.
        out = model(dict(inp))
        return out["energy"], out["forces"]

    def end_to_end():
        out = model(converter(atoms))
        return (
            out["energy"].detach().cpu().numpy().item(),
            out["forces"].detach().cpu().numpy(),
        )

    def convert_only():
        return converter(atoms)

    energy, forces = model_only()
    sanity = {
        "energy_eV_random_weights": float(energy.detach().sum()),
        "forces_finite": bool(torch.isfinite(forces).all()),
        "max_abs_net_force": float(forces.detach().sum(0).abs().max()),
        "forces_dtype": str(forces.dtype),
    }

    load_before = _loadavg()
    t_model = _stats(_time(model_only, repeats))
    t_e2e = _stats(_time(end_to_end, repeats))
    t_conv = _stats(_time(convert_only, repeats))

    t_batch = None
    if batch > 1:
        batch_inputs = converter([atoms] * batch)
        n_batch_atoms = int(batch_inputs[spk.properties.n_atoms].sum())
        if n_batch_atoms != batch * n_atoms:
            raise RuntimeError(f"batched converter gave {n_batch_atoms} atoms")
        t_batch = _stats(_time(lambda: model_only(batch_inputs), repeats))

    load_after = _loadavg()

    def per_s(ms: float, n: int = 1) -> float:
        return 1e3 * n / ms

    return {
        "available": True,
        "schnetpack_version": _spk_version(spk),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "n_atoms": n_atoms,
        "n_edges": n_edges,
        "model_only_ms": t_model["median_ms"],
        "model_only_structures_per_s": per_s(t_model["median_ms"]),
        "end_to_end_ms": t_e2e["median_ms"],
        "end_to_end_structures_per_s": per_s(t_e2e["median_ms"]),
        "batch8_structures_per_s": (
            per_s(t_batch["median_ms"], batch) if t_batch is not None else None
        ),
        "neighbor_list": f"schnetpack.transform.{nbl_name} via spk.interfaces.AtomsConverter",
        "converter_only_ms": t_conv["median_ms"],
        "batch_size": batch if t_batch is not None else None,
        "batch_ms": t_batch["median_ms"] if t_batch is not None else None,
        "repeats": repeats,
        "warmup": WARMUP,
        "dtype": "float32",
        "model": (
            f"SchNet n_atom_basis={N_ATOM_BASIS} n_filters={N_ATOM_BASIS} "
            f"n_interactions={N_INTERACTIONS} GaussianRBF(n_rbf={N_RBF}) "
            f"CosineCutoff({CUTOFF}) + Atomwise + Forces"
        ),
        "compat_shims": shims,
        "timings": {
            "model_only": t_model,
            "end_to_end": t_e2e,
            "converter_only": t_conv,
            "batch": t_batch,
        },
        "sanity": sanity,
        "loadavg_1min_before_after": [load_before, load_after],
    }


def _table(res: dict) -> str:
    t = res["timings"]
    rows = [
        ("model only (E+F, NL precomputed)", t["model_only"], 1),
        ("converter only (NL + tensors)", t["converter_only"], 1),
        ("end to end (converter+model+numpy)", t["end_to_end"], 1),
    ]
    if t["batch"] is not None:
        rows.append((f"batch of {res['batch_size']}, model only", t["batch"], res["batch_size"]))
    head = (
        f"{'figure':<38}{'median ms':>11}{'min ms':>9}{'q1-q3 ms':>17}{'structures/s':>14}"
        f"{'cpu/wall':>10}"
    )
    lines = [head, "-" * len(head)]
    for name, s, n in rows:
        iqr = f"{s['q1_ms']:.1f}-{s['q3_ms']:.1f}"
        lines.append(
            f"{name:<38}{s['median_ms']:>11.2f}{s['min_ms']:>9.2f}{iqr:>17}"
            f"{1e3 * n / s['median_ms']:>14.2f}{s['cpu_per_wall']:>10.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="directory holding ean/ (default: data_dir())")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per figure (>= 20)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--neighbor-list", choices=("matscipy", "ase"), default="matscipy")
    ap.add_argument("--batch", type=int, default=BATCH, help="batch size; <= 1 to skip")
    args = ap.parse_args(argv)

    ok, msg = backend_status()
    if not ok:
        print(f"SchNetPack reference benchmark skipped: torch/schnetpack not importable ({msg}).")
        print(
            "Install with: pip install torch==2.13.0 && pip install schnetpack 'torch==2.13.0' "
            "(pip then picks schnetpack 2.0.4: 2.1.x pins sympy<=1.12, torch 2.13 needs "
            ">=1.13.3; for 2.1.1 add: pip install --no-deps schnetpack==2.1.1)"
        )
        print(json.dumps({"available": False, "reason": msg}))
        return 0

    repo_root = Path(__file__).resolve().parents[1]
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    from jat.data import data_dir, read_ean

    path = data_dir(args.data_dir) / EAN_FILE
    atoms = read_ean(path, index=0)[0]
    print(
        f"structure: {path} [0]: {len(atoms)} atoms, cell {atoms.cell.lengths().round(3)} Å, "
        f"pbc {atoms.pbc.tolist()}"
    )

    res = measure(
        atoms,
        repeats=args.repeats,
        threads=args.threads,
        neighbor_list=args.neighbor_list,
        batch=args.batch,
    )
    if not res.get("available"):
        print(f"SchNetPack reference benchmark skipped: {res['reason']}")
        print(json.dumps(res))
        return 0

    print(
        f"schnetpack {res['schnetpack_version']}, torch {res['torch_version']}, "
        f"CPU cores {_n_cores()}, torch.get_num_threads() = {res['threads']}, "
        f"interop threads {res['interop_threads']}"
    )
    print(f"model: {res['model']}, {res['dtype']}, random weights")
    print(
        f"neighbour list: {res['neighbor_list']} (cutoff {CUTOFF} Å): "
        f"{res['n_atoms']} atoms, {res['n_edges']} directed edges"
    )
    if res["compat_shims"]:
        print(f"compat shims applied: {res['compat_shims']}")
    s = res["sanity"]
    print(
        f"sanity: forces finite {s['forces_finite']}, max |sum F| "
        f"{s['max_abs_net_force']:.2e} eV/Å, forces {s['forces_dtype']}"
    )
    print(
        f"timings: median of {res['repeats']} after {res['warmup']} warm-up calls; 1-min load "
        f"average before/after {res['loadavg_1min_before_after']} on {_n_cores()} cores "
        "(load above the core count, or cpu/wall well below the thread count, means other "
        "processes competed for the CPU and the figures are pessimistic)"
    )
    print(_table(res))
    keys = (
        "schnetpack_version",
        "torch_version",
        "threads",
        "n_atoms",
        "n_edges",
        "model_only_ms",
        "model_only_structures_per_s",
        "end_to_end_ms",
        "end_to_end_structures_per_s",
        "batch8_structures_per_s",
        "neighbor_list",
    )
    out = {k: res[k] for k in keys}
    out.update(
        {
            k: res[k]
            for k in (
                "available",
                "converter_only_ms",
                "repeats",
                "compat_shims",
                "loadavg_1min_before_after",
            )
        }
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
