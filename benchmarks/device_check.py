"""GPU check: JAX sees the GPU, the GPU-relevant tests pass, and the headline figures on it.

    python benchmarks/device_check.py [--data-dir DIR] [--budget 280] [--pytest "ARGS"]
                                      [--allow-cpu] [--no-tests]

Within ``--budget`` seconds (default 280; the whole check is meant to fit in 5 minutes; parts
that would start after it are reported as skipped):

1. the JAX backend and devices; without a GPU the script says so and exits 1, unless
   ``--allow-cpu``, which runs a tiny version on the CPU (tiny models, 4 structures, 225 atoms
   only, no tests unless ``--pytest`` is given) so that a smoke test can exercise it;
2. a pytest subset that exercises the device (``--pytest``; default: models, potential, MD and
   data-parallel tests, not the slow ones);
3. training and inference throughput (structures/s) of JAT, SchNet and the Bessel baseline at
   their EAN reference settings, EAN batch 8 (``throughput.training`` / ``throughput.inference``),
   and JAT on an ANI-1 large batch (256, energies);
4. MD ms/step of JAT with JAX-MD (``md_step.time_jax_md``) at 225 and 14 400 atoms (the EAN box
   replicated 1³ and 4³).

The last line printed is one JSON object with every figure (``"ok"``: all checks passed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = (
    "tests/test_models.py tests/test_potential.py tests/test_md.py tests/test_data_parallel.py "
    "-m 'not slow' -x -q -p no:cacheprovider"
)
EAN_BATCH = 8
ANI1_BATCH = 256
MD_SIZES = (1, 4)  # the EAN box replicated n×n×n: 225 and 14 400 atoms


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="reference data directory")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole check")
    parser.add_argument(
        "--pytest", default=None, help=f"pytest arguments (default: {DEFAULT_TESTS})"
    )
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest subset")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="without a GPU, run a tiny version on the CPU"
    )
    return parser.parse_args(argv)


class Clock:
    """The check's time budget: what starts after it is skipped."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def run(self, name: str, fn, out: dict[str, Any]) -> None:
        if self.left() <= 0:
            out[name] = {"skipped": "time budget spent"}
            print(f"{name}: skipped (time budget spent)", flush=True)
            return
        t0 = time.monotonic()
        try:
            out[name] = fn()
        except (Exception, SystemExit) as err:  # SystemExit: missing data files
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        out[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {json.dumps(out[name])}", flush=True)


def run_tests(args_text: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", *shlex.split(args_text)]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=max(timeout, 1.0)
        )
    except subprocess.TimeoutExpired:
        return {"passed": False, "error": f"pytest ran past {timeout:.0f} s"}
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"passed": proc.returncode == 0, "returncode": proc.returncode, "summary": tail[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import jax

    backend = jax.default_backend()
    gpu = backend in ("gpu", "cuda", "rocm")
    devices = [str(d) for d in jax.devices()]
    print(f"jax {jax.__version__}, backend {backend}, devices {devices}", flush=True)
    if not gpu and not args.allow_cpu:
        message = f"no GPU: JAX runs on {backend} ({devices}); nothing checked (--allow-cpu runs "
        message += "a tiny version on the CPU)"
        print(message, file=sys.stderr)
        print(json.dumps({"ok": False, "gpu": False, "backend": backend, "error": message}))
        return 1
    tiny = not gpu

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import md_step
    import throughput
    from _common import ANI1_FILES, EAN_FILE, model_specs, require

    from jat.data import data_dir, read_ani1, read_structures
    from jat.training.steps import LossSpec

    root = data_dir(args.data_dir)
    clock = Clock(args.budget)
    out: dict[str, Any] = {"gpu": gpu, "backend": backend, "devices": devices, "tiny": tiny}
    tests = args.pytest if args.pytest is not None else (None if tiny else DEFAULT_TESTS)
    if tests and not args.no_tests:
        clock.run("tests", lambda: run_tests(tests, clock.left() - 120), out)

    specs = model_specs("jat,schnet,bessel", quick=tiny)
    n_ean, ean_batch = (4, 2) if tiny else (40, EAN_BATCH)

    def ean_case(name: str):
        def case() -> dict[str, Any]:
            structures = list(read_structures(require(root / EAN_FILE)))[:n_ean]
            pot = specs[name].create()
            _, train = throughput.training(
                pot, structures, ean_batch, LossSpec(), epochs=1 if tiny else 3, max_buckets=1
            )
            atoms = [s.to_atoms() for s in structures]
            infer = throughput.inference(pot, atoms, ean_batch, repeats=1 if tiny else 3)
            return {"batch": ean_batch, "train": train, "infer": infer}

        return case

    for name in specs:
        clock.run(f"ean_{name}", ean_case(name), out)

    def ani1_case() -> dict[str, Any]:
        batch = 8 if tiny else ANI1_BATCH
        structures = []
        for file in ANI1_FILES:
            structures.extend(read_ani1(require(root / file), fraction=0.01))
        structures = structures[: 2 * batch]
        pot = specs["jat"].create()
        loss = LossSpec(forces_weight=0.0, energy_weight=1.0)
        _, train = throughput.training(pot, structures, batch, loss, epochs=1 if tiny else 3)
        atoms = [s.to_atoms() for s in structures]
        infer = throughput.inference(pot, atoms, batch, repeats=1 if tiny else 3)
        return {"batch": batch, "train": train, "infer": infer}

    clock.run("ani1_jat", ani1_case, out)

    def md_case(n: int):
        def case() -> dict[str, Any]:
            atoms = md_step.load_box(root, n)
            pot = specs["jat"].create()
            steps = 5 if tiny else 20
            r = md_step.time_jax_md(pot, atoms, steps, repeats=2, neighbor_list="jax_md")
            return {"n_atoms": len(atoms), **r}

        return case

    for n in MD_SIZES[:1] if tiny else MD_SIZES:
        clock.run(f"md_jat_{225 * n**3}", md_case(n), out)

    failed = [k for k, v in out.items() if isinstance(v, dict) and "error" in v]
    if "tests" in out and not out["tests"].get("passed", False):
        failed.append("tests")
    out["failed"] = sorted(set(failed))
    out["ok"] = not out["failed"]
    out["elapsed_s"] = round(args.budget - clock.left(), 1)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
