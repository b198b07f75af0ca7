"""Give a potential trained without a short-range repulsion the one ``model.repulsion: zbl`` adds.

    python examples/add_repulsion.py runs/ean-20261121-101500 runs/ean-zbl

The ZBL term is switched off at each species pair's shortest distance in the run's training set
(read again from the run's ``config.yaml`` and ``split.json``), so it is zero on every training
configuration: the network would have trained exactly as it did, and the parameters are kept.
The potential with the term is saved to OUT_DIR (``jat.Potential.load`` reads it). Runs trained
with ``model.repulsion: zbl`` already carry the term and need nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN_DIR", help="run directory of python -m jat.train")
    parser.add_argument("out", metavar="OUT_DIR", help="where to save the potential")
    parser.add_argument(
        "--radius-scale", type=float, default=0.8,
        help="pairs absent from the data: off at this x the sum of covalent radii",
    )
    args = parser.parse_args(argv)

    import jat
    from jat.config import load_config
    from jat.models.repulsion import data_radii
    from jat.training.loop import check_split, load_splits

    run = Path(args.run)
    pot = jat.Potential.load(run)
    if pot.repulsion is not None:
        raise SystemExit(f"{run}: the potential already has a repulsion ({pot.repulsion})")
    cfg = load_config(run / "config.yaml")
    sets = load_splits(cfg)
    try:
        check_split(run, sets)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    radii = data_radii(sets["train"], pot.species, pot.cutoff)
    with_term = pot.with_repulsion(
        {"kind": "zbl", "radius_scale": args.radius_scale, "radii": radii}
    )
    largest = 0.0
    for s in sets["train"][:5]:
        atoms = s.to_atoms()
        change = with_term.energy(atoms) - pot.energy(atoms)
        largest = max(largest, abs(change))
    with_term.save(args.out)
    r = with_term.repulsion.pair_radii
    table = {
        f"{a}-{b}": round(float(r[i, j]), 4)
        for i, a in enumerate(pot.species)
        for j, b in enumerate(pot.species)
        if j >= i
    }
    print(f"ZBL switched off at (Å): {table}")
    print(f"energy change on the first training structures: {largest:.3g} eV (zero by design)")
    print(f"saved {args.out}")
    result = {"run": str(run), "out": str(args.out), "radii": table, "max_change_eV": largest}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
