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

import numpy as np


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
    from jat.training.loop import SPLIT_FILE, load_splits

    run = Path(args.run)
    pot = jat.Potential.load(run)
    if pot.repulsion is not None:
        raise SystemExit(f"{run}: the potential already has a repulsion ({pot.repulsion})")
    cfg = load_config(run / "config.yaml")
    sets, sources = load_splits(cfg)
    saved = json.loads((run / SPLIT_FILE).read_text())
    if sources["train"] != saved["train"]:
        raise SystemExit(
            f"{run / SPLIT_FILE}: the data no longer gives the run's training set "
            "(files changed since training)"
        )
    radii = data_radii(sets["train"], pot.species, pot.cutoff)
    with_term = pot.with_repulsion(
        {"kind": "zbl", "radius_scale": args.radius_scale, "radii": radii}
    )
    largest = max(
        float(np.abs(with_term.compute(s.to_atoms(), forces=False).energy
                     - pot.compute(s.to_atoms(), forces=False).energy))
        for s in sets["train"][:5]
    )
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
