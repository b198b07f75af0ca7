"""Command line: ``python -m jat.train [CONFIG.yaml] [key=value ...]``.

With no arguments it trains a small JAT model on the EAN GFN2-xTB data set shipped with jat.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EPILOG = """\
examples:
  python -m jat.train                                   # built-in default: small JAT, EAN xTB data
  python -m jat.train examples/ean.yaml                 # a config file
  python -m jat.train examples/ean.yaml training.time_budget=20m model.layers=5
  python -m jat.train --resume runs/ean-20261121-101500 # continue an interrupted run
  python -m jat.train --template > my.yaml              # commented template with every option
  python -m jat.train examples/ean.yaml --print-config  # the resolved configuration
  python -m jat.train --resume RUN_DIR --print-config   # the configuration a run uses
  python -m jat.train --schema > jat-config.schema.json # JSON schema, for editors

several processes (hosts): run the same command in each, e.g. on one machine
  python -m jat.train my.yaml --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0
  python -m jat.train my.yaml --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1
under SLURM (srun) or Open MPI (mpirun) the three flags are detected and may be left out
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jat.train",
        description="Train a jat potential from a YAML config plus key=value overrides.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--template", action="store_true", help="print a commented template")
    parser.add_argument(
        "--schema", action="store_true", help="print the JSON schema of the configuration file"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (with --resume: the run's) and exit",
    )
    group = parser.add_argument_group(
        "several processes", "one run over several processes (hosts); all three flags or none"
    )
    group.add_argument(
        "--coordinator", metavar="HOST:PORT", help="address and a free port of process 0"
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, metavar="K", help="this process, 0…N-1")
    ns = parser.parse_args(argv)

    from jat.config import ConfigError, dump_config, load_config, load_run_config, template

    if ns.template:
        print(template(), end="")
        return 0
    if ns.schema:
        import json

        from jat.config import json_schema

        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
        return 0
    if not ns.print_config:
        from jat.training.distributed import initialize

        try:  # before any JAX computation; SLURM and Open MPI launches are detected
            initialize(ns.coordinator, ns.num_processes, ns.process_id)
        except ValueError as err:
            parser.error(str(err))
    config_path = None
    overrides = list(ns.args)
    if overrides and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    try:
        if ns.resume:
            if config_path or overrides:
                parser.error("--resume takes the configuration from the run directory")
            cfg = load_run_config(ns.resume) if ns.print_config else None
        else:
            cfg = load_config(config_path, overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ns.print_config:
        print(dump_config(cfg), end="")
        return 0

    from jat.data.structure import DataError
    from jat.training import train
    from jat.training.errors import RunCompleteError, RunError, TrainingInterrupted

    try:
        train(cfg, resume=ns.resume)
    except RunCompleteError as err:
        print(err)
        return err.exit_code
    except RunError as err:  # refusals, write failures, non-finite losses: the message says
        print(f"error: {err}", file=sys.stderr)  # what is intact and what to do
        return err.exit_code
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the run directory was claimed: nothing to resume
        print("\ninterrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    sys.exit(main())
