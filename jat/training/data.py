"""The data of a run: configured paths, files read with their formats' options, the split."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ase.data import atomic_numbers

from jat.config import Config
from jat.data.readers import detect_format, read_structures
from jat.data.readers import resolve_path as resolve_data_file
from jat.data.structure import Structure
from jat.data.table import StructureTable, collect
from jat.models.repulsion import data_radii
from jat.training.rundir import SPLIT_FILE
from jat.training.splits import SETS, split_indices


def format_of(path: str, fmt: str) -> str:
    """The reader format of an expanded configured path (``data.format``, or detected)."""
    return fmt if fmt != "auto" else detect_format(resolve_data_file(path))


def expand_path(path: str) -> str:
    """``$JAT_DATA_DIR`` in a configured path stands for :func:`jat.data.data_dir` (the variable
    when set, else ``../shared/data``); ``~`` and other environment variables expand too."""
    from jat.data import data_dir

    if path == "builtin":
        return path
    for token in ("${JAT_DATA_DIR}", "$JAT_DATA_DIR"):
        path = path.replace(token, str(data_dir()))
    return os.path.expanduser(os.path.expandvars(path))


def read_files(paths: Sequence[str], cfg: Config) -> StructureTable:
    """All structures of ``paths`` with the reader options that apply to each file's format, as
    a :class:`StructureTable` filled while the readers stream (a few hundred bytes per small
    molecule instead of a ``Structure`` object's 1.3 kB)."""
    return collect(_read_files(paths, cfg))


def _read_files(paths: Sequence[str], cfg: Config) -> Iterator[Structure]:
    for path in map(expand_path, paths):
        fmt = format_of(path, cfg.data.format)
        options: dict[str, Any] = {}
        if fmt == "ani1":
            options = {
                "fraction": cfg.data.ani1.fraction,
                "high_energy": cfg.data.ani1.high_energy,
                "seed": cfg.seed,
            }
        elif fmt == "neuralil" and cfg.data.composition is not None:
            options = {"composition": cfg.data.composition}
        elif fmt == "qm9" and cfg.data.qm9.exclude is not None:
            options = {"exclude": expand_path(cfg.data.qm9.exclude)}
        yield from read_structures(path, format=fmt, **options)


def load_splits(cfg: Config) -> dict[str, StructureTable]:
    """Structures of every set (``SETS``), as the configuration splits its data."""
    train_files = read_files(cfg.data.train, cfg)
    if not train_files:
        raise ValueError(f"no structures in {list(cfg.data.train)}")
    by = cfg.data.split.by
    if by == "auto":
        formats = [format_of(expand_path(p), cfg.data.format) for p in cfg.data.train]
        is_ani1 = all(f == "ani1" for f in formats)
        by = "molecule" if is_ani1 else "configuration"
    val_given = cfg.data.validation is not None
    test_given = cfg.data.test is not None
    if val_given and cfg.data.split.kfold is not None:
        raise ValueError(
            "data.validation names validation files and data.split.kfold cuts the training "
            "files into validation folds: use one of the two"
        )
    idx = split_indices(
        train_files,
        by=by,
        validation=0 if val_given else cfg.data.split.validation,
        test=0 if test_given else cfg.data.split.test,
        n_train=cfg.data.split.n_train,
        exclude_formulas=cfg.data.split.exclude_formulas,
        seed=cfg.seed,
        kfold=cfg.data.split.kfold,
        fold=cfg.data.split.fold,
    )
    sets = {name: train_files.take(idx[name]) for name in SETS}
    if val_given:
        sets["validation"] = read_files(cfg.data.validation, cfg)
    if test_given:
        sets["test"] = read_files(cfg.data.test, cfg)
    return sets


def split_record(sets: Mapping[str, StructureTable], batch: int = 4096) -> Iterator[str]:
    """``split.json``'s text, piece by piece: ``json.dumps({name: sources}, indent=1)`` plus a
    newline for the names of ``SETS``, without holding every source string at once."""
    yield "{"
    for i, name in enumerate(SETS):
        yield ("," if i else "") + f"\n {json.dumps(name)}: ["
        pieces, first = [], True
        for source in sets[name].iter_sources():
            pieces.append(("\n  " if first else ",\n  ") + json.dumps(source))
            first = False
            if len(pieces) == batch:
                yield "".join(pieces)
                pieces = []
        yield "".join(pieces) + ("]" if first else "\n ]")
    yield "\n}\n"


def check_split(run_dir: str | os.PathLike, sets: Mapping[str, StructureTable]) -> None:
    """Raise unless ``sets`` (from :func:`load_splits`) are the split the run recorded."""
    path = Path(run_dir) / SPLIT_FILE
    with path.open("rb") as fh:
        same = all(fh.read(len(raw)) == raw for raw in map(str.encode, split_record(sets)))
        same = same and fh.read(1) == b""
    if not same:  # a file written in another layout still matches if its content does
        saved = json.loads(path.read_text())
        same = set(saved) == set(SETS) and all(saved[name] == sets[name].sources for name in SETS)
    if not same:
        raise ValueError(
            f"{path}: the data no longer gives the same split; the files changed since the run "
            "started"
        )


def species_of(cfg: Config, sets: dict[str, StructureTable]) -> tuple[str, ...]:
    """The model's species: ``data.species``, or every element of the data by atomic number."""
    seen = {x for structures in sets.values() for x in structures.elements_present()}
    if cfg.data.species is None:
        return tuple(sorted(seen, key=lambda x: atomic_numbers[x]))
    missing = sorted(seen - set(cfg.data.species))
    if missing:
        raise ValueError(f"data.species {list(cfg.data.species)} lacks {missing} found in the data")
    return tuple(cfg.data.species)


def repulsion_spec(
    cfg: Config, train: list[Structure], species: tuple[str, ...]
) -> dict[str, Any] | None:
    """The ``repulsion`` argument of ``Potential.create`` for this configuration."""
    if cfg.model.repulsion == "none":
        return None
    spec: dict[str, Any] = {
        "kind": cfg.model.repulsion,
        "radius_scale": cfg.model.repulsion_radius_scale,
    }
    if cfg.model.repulsion_radii == "data":
        spec["radii"] = data_radii(train, species, cfg.model.cutoff)
    return spec
