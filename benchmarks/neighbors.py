"""Neighbour-list build time of jat.graph versus system size, next to vesin and ASE.

The EAN box (first configuration of ean_15pairs_dft.jsonl, 225 atoms, 12.9 Å cubic) is
replicated 1x..4x per axis. jat is timed in the steady state of the jitted ``build`` with a
precomputed spec (what an MD step pays); allocate + compile is reported separately. The public
call as a user makes it, ``jat.graph.neighbor_list`` (allocation from the number density, build,
host checks; compiled once), is timed too, and so is the same call with the exact host count
of the edges the allocation did before (``allocate(...)`` + build). Targets: build <= 2x vesin,
public call <= 1.5x vesin (single thread) above 5 000 atoms. The last line printed is a JSON
object with all figures.

    python benchmarks/neighbors.py [--data-dir DIR] [--repeats 10] [--cutoff 5.0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ase
import jax
import jax.numpy as jnp
import numpy as np
import vesin
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jat.graph import allocate, build, neighbor_list

REPO = Path(__file__).resolve().parents[1]
BUILD = jax.jit(build, static_argnums=3)


def read_ean_box(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (225, 3) Å and cubic cell (3, 3) Å of the first EAN configuration."""
    with (data_dir / "ean" / "ean_15pairs_dft.jsonl").open() as f:
        record = json.loads(f.readline())
    return np.array(record["Positions"]), np.diag(record["Cell-Size"])


def replicate(positions: np.ndarray, cell: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return (positions[None] + (shifts @ cell)[:, None]).reshape(-1, 3), cell * n


def best_ms(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` in ms over ``repeats`` calls after one warm-up call (the
    machine may be shared: the minimum is the least noisy estimate)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times) * 1e3)


def bench(positions: np.ndarray, cell: np.ndarray, cutoff: float, repeats: int) -> dict:
    start = time.perf_counter()
    spec = allocate(positions, cutoff, cell)
    pos = jnp.asarray(positions, jnp.float32)
    box = jnp.asarray(cell, jnp.float32)
    neighbors = jax.block_until_ready(BUILD(pos, box, None, spec))
    setup_s = time.perf_counter() - start
    assert not bool(neighbors.overflow)
    jat_ms = best_ms(lambda: jax.block_until_ready(BUILD(pos, box, None, spec)), repeats)

    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)

    def run_vesin():
        return calculator.compute(positions, cell, True, quantities="ijS")

    vesin_ms = best_ms(run_vesin, repeats)

    def public():
        return jax.block_until_ready(neighbor_list(positions, cutoff, cell, True))

    def counted():  # the allocation with the host count of the edges, then the same build
        exact = allocate(positions, cutoff, cell, True)
        return jax.block_until_ready(BUILD(pos, box, None, exact))

    public_ms = best_ms(public, repeats)
    counted_ms = best_ms(counted, max(1, repeats // 3))
    atoms = ase.Atoms(
        numbers=np.ones(len(positions), int), positions=positions, cell=cell, pbc=True
    )
    ase_ms = best_ms(lambda: ase_neighbor_list("ijS", atoms, cutoff), max(1, repeats // 3))
    n_vesin = len(run_vesin()[0])
    assert n_vesin == int(neighbors.n_edges), (n_vesin, int(neighbors.n_edges))
    return dict(
        n_atoms=len(positions),
        n_edges=int(neighbors.n_edges),
        method=spec.method,
        jat_ms=round(jat_ms, 3),
        vesin_ms=round(vesin_ms, 3),
        ase_ms=round(ase_ms, 3),
        ratio_to_vesin=round(jat_ms / vesin_ms, 3),
        public_ms=round(public_ms, 3),
        public_ratio_to_vesin=round(public_ms / vesin_ms, 3),
        counted_allocation_ms=round(counted_ms, 3),
        allocate_compile_s=round(setup_s, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("JAT_DATA_DIR", REPO / ".." / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=Path(default_data))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cutoff", type=float, default=5.0)
    args = parser.parse_args()

    positions, cell = read_ean_box(args.data_dir)
    rows = [bench(*replicate(positions, cell, n), args.cutoff, args.repeats) for n in (1, 2, 3, 4)]

    print(
        f"{'atoms':>6} {'edges':>8} {'method':>9} {'jat ms':>8} {'vesin ms':>9} "
        f"{'ase ms':>8} {'jat/vesin':>9} {'alloc+jit s':>11} {'public ms':>9} "
        f"{'public/vesin':>12} {'counted ms':>10}"
    )
    for r in rows:
        print(
            f"{r['n_atoms']:>6} {r['n_edges']:>8} {r['method']:>9} {r['jat_ms']:>8.2f} "
            f"{r['vesin_ms']:>9.2f} {r['ase_ms']:>8.1f} {r['ratio_to_vesin']:>9.2f} "
            f"{r['allocate_compile_s']:>11.2f} {r['public_ms']:>9.2f} "
            f"{r['public_ratio_to_vesin']:>12.2f} {r['counted_allocation_ms']:>10.2f}"
        )
    cells = [r for r in rows if r["method"] == "cell_list"]
    exponent = (
        float(
            np.polyfit(
                np.log([r["n_atoms"] for r in cells]), np.log([r["jat_ms"] for r in cells]), 1
            )[0]
        )
        if len(cells) >= 2
        else None
    )
    targets = {
        str(r["n_atoms"]): r["jat_ms"] <= 2 * r["vesin_ms"] for r in rows if r["n_atoms"] > 5000
    }
    public_targets = {
        str(r["n_atoms"]): r["public_ms"] <= 1.5 * r["vesin_ms"] for r in rows
        if r["n_atoms"] > 5000
    }
    print(f"cell-list time ~ N^{exponent:.2f}; jat <= 2 x vesin: {targets}; "
          f"public call <= 1.5 x vesin: {public_targets}")
    print(
        json.dumps(
            dict(
                cutoff=args.cutoff,
                repeats=args.repeats,
                device=str(jax.devices()[0]),
                sizes=rows,
                cell_list_exponent=None if exponent is None else round(exponent, 3),
                within_2x_vesin=targets,
                public_within_1_5x_vesin=public_targets,
            )
        )
    )


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
