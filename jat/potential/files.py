"""The file format of a saved potential: a directory with ``metadata.json`` (versioned, readable)
and ``params.msgpack`` (flax msgpack; never pickle, so loading never executes code).

Reading treats the files as untrusted: every field of the metadata is type- and range-checked
and every parameter is checked for shape, a real floating dtype and finite values; each problem
is a :class:`PotentialFileError` naming the file and the field. Saving refuses to replace
anything but a saved potential (or an empty directory) unless told to, and swaps the new
directory in atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers

from jat.atomic_io import atomic_directory
from jat.dtypes import DTYPES

FORMAT = "jat.Potential"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
PARAMS_FILE = "params.msgpack"
POTENTIAL_FILES = frozenset({METADATA_FILE, PARAMS_FILE})
MAX_METADATA_BYTES = 16 * 2**20
MAX_MEMBERS = 1024  # committee members a file may declare (checked before building anything)
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "best", "last")


class PotentialFileError(ValueError):
    """A malformed or unsafe potential file; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Metadata:
    """The checked contents of ``metadata.json``."""

    path: Path
    model: str
    model_kwargs: dict[str, Any]
    species: tuple[str, ...]
    cutoff: float
    dtype: str
    energy_shift: np.ndarray
    energy_scale: np.ndarray
    repulsion: dict[str, Any] | None
    module_class: str | None
    num_params: int | None
    members: int | None = None
    ensemble: str | None = None
    calibration: dict[str, Any] | None = None
    label_statistics: dict[str, Any] | None = None
    properties: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------
# writing


def metadata_dict(potential: Any, jat_version: str) -> dict[str, Any]:
    """What ``metadata.json`` holds for ``potential`` (a :class:`jat.Potential`)."""
    import jax

    module = potential.module
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jat_version": jat_version,
        "model": potential.model,
        "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "model_kwargs": _jsonable(dict(potential.model_kwargs)),
        "species": list(potential.species),
        "cutoff": potential.cutoff,
        "dtype": potential.dtype,
        "energy_shift": np.asarray(potential.energy_shift, np.float64).tolist(),
        "energy_scale": np.asarray(potential.energy_scale, np.float64).tolist(),
        "repulsion": None if potential.repulsion is None else potential.repulsion.to_dict(),
        "members": potential.members,
        "ensemble": potential.ensemble,
        "calibration": potential.calibration.to_dict(),
        "label_statistics": None
        if potential.label_statistics is None
        else _finite_or_null(potential.label_statistics.to_dict()),
        "properties": [t.to_dict() for t in potential.properties],
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(potential.params))),
    }


def write_files(potential: Any, directory: str | os.PathLike, jat_version: str) -> None:
    """Write the two files into an existing ``directory`` (not atomic; see :func:`save`)."""
    import jax
    from flax import serialization

    directory = Path(directory)
    meta = metadata_dict(potential, jat_version)
    params = jax.tree.map(np.asarray, potential.params)
    _write(directory / METADATA_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    _write(directory / PARAMS_FILE, serialization.msgpack_serialize(params))


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def check_save_target(directory: Path) -> None:
    """Raise FileExistsError unless ``directory`` is absent, empty, or holds a saved potential
    and nothing else (what :func:`save` may replace without ``overwrite=True``)."""
    if not (directory.exists() or directory.is_symlink()):
        return
    hint = "choose another directory, or pass overwrite=True to replace it"
    if not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a potential directory; {hint}")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    if any(marker in entries for marker in RUN_MARKERS) and METADATA_FILE not in entries:
        raise FileExistsError(
            f"{directory} is a training run directory (it holds {', '.join(entries[:6])}); "
            f"saving there would delete the run: {hint}"
        )
    if not _is_potential(directory / METADATA_FILE):
        raise FileExistsError(
            f"{directory} holds files that are not a jat potential ({', '.join(entries[:6])}"
            f"{', …' if len(entries) > 6 else ''}); {hint}"
        )
    extra = sorted(set(entries) - POTENTIAL_FILES)
    if extra:
        raise FileExistsError(
            f"{directory} holds a jat potential and also {', '.join(extra[:6])}, which saving "
            f"would delete; {hint}"
        )


def _is_potential(meta_path: Path) -> bool:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def save(
    potential: Any, directory: str | os.PathLike, jat_version: str, overwrite: bool = False
) -> Path:
    """Save ``potential`` to ``directory``: written beside it and swapped in when complete.

    Refuses (FileExistsError) a target that is a file, a run directory, or a directory holding
    anything but a saved potential, unless ``overwrite``.
    """
    directory = Path(directory)
    if not overwrite:
        check_save_target(directory)
    elif directory.is_file() or directory.is_symlink():
        directory.unlink()
    with atomic_directory(directory) as tmp:
        write_files(potential, tmp, jat_version)
    return directory


# ---------------------------------------------------------------------------------------------
# reading


def read_metadata(directory: Path, known_models: Mapping[str, Any]) -> Metadata:
    """The checked metadata of the potential in ``directory``."""
    path = directory / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no jat potential metadata here")
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise PotentialFileError(f"{path}: {path.stat().st_size} bytes, too large for metadata")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise PotentialFileError(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise PotentialFileError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise PotentialFileError(f"{path}: JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise PotentialFileError(f"{path}: expected a JSON object, got {_kind(meta)}")

    def bad(field: str, problem: str) -> PotentialFileError:
        return PotentialFileError(f"{path}: entry {field!r}: {problem}")

    if meta.get("format") != FORMAT:
        raise bad("format", f"is {_show(meta.get('format'))}, not {FORMAT!r}")
    version = meta.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise bad("format_version", f"must be a positive integer, got {_show(version)}")
    if version > FORMAT_VERSION:
        raise bad(
            "format_version",
            f"{version} is newer than this jat reads ({FORMAT_VERSION}); upgrade jat",
        )
    for key in ("model", "species", "cutoff", "dtype", "energy_shift", "energy_scale"):
        if key not in meta:
            raise PotentialFileError(f"{path}: missing entry {key!r}")
    model = meta["model"]
    if not isinstance(model, str) or (model != "custom" and model not in known_models):
        choices = ", ".join([*known_models, "custom"])
        raise bad("model", f"must be one of {choices}, got {_show(model)}")
    species = meta["species"]
    if not isinstance(species, list) or not species:
        raise bad("species", f"must be a non-empty list of element symbols, got {_show(species)}")
    for k, s in enumerate(species):
        if not isinstance(s, str) or s not in atomic_numbers or s == "X":
            raise bad("species", f"entry {k} is not an element symbol: {_show(s)}")
    if len(set(species)) != len(species):
        raise bad("species", f"repeats an element: {species}")
    cutoff = meta["cutoff"]
    if not _is_number(cutoff) or not (math.isfinite(cutoff) and 0 < cutoff <= 1e3):
        raise bad("cutoff", f"must be a positive finite number of Å, got {_show(cutoff)}")
    dtype = meta["dtype"]
    if dtype not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}, got {_show(dtype)}")
    n = len(species)
    members = meta.get("members")
    if members is not None and (not _is_int(members) or not 2 <= members <= MAX_MEMBERS):
        raise bad(
            "members",
            f"must be null (one parameter set) or an integer from 2 to {MAX_MEMBERS}, "
            f"got {_show(members)}",
        )
    ensemble = meta.get("ensemble")
    if members is None and ensemble is not None:
        raise bad("ensemble", f"must be null without members, got {_show(ensemble)}")
    if members is not None and ensemble not in (None, "deep", "shallow"):
        raise bad("ensemble", f"must be 'deep' or 'shallow', got {_show(ensemble)}")
    rows = None if ensemble == "shallow" else members  # a shallow ensemble has one row
    shift = _reference(meta["energy_shift"], n, rows, "energy_shift", bad)
    scale = _reference(meta["energy_scale"], n, rows, "energy_scale", bad)
    calibration = meta.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise bad("calibration", f"must be null or an object, got {_kind(calibration)}")
    stats = meta.get("label_statistics")
    if stats is not None and not isinstance(stats, dict):
        raise bad("label_statistics", f"must be null or an object, got {_kind(stats)}")
    targets = meta.get("properties")  # absent from files written before property targets
    if targets is not None and not (
        isinstance(targets, list) and all(isinstance(t, dict) for t in targets)
    ):
        raise bad("properties", f"must be null or a list of objects, got {_kind(targets)}")
    kwargs = meta.get("model_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise bad("model_kwargs", f"must be an object of hyperparameters, got {_kind(kwargs)}")
    repulsion = meta.get("repulsion")
    if repulsion is not None and not isinstance(repulsion, dict):
        raise bad("repulsion", f"must be null or an object, got {_kind(repulsion)}")
    module_class = meta.get("module_class")
    num_params = meta.get("num_params")
    if num_params is not None and (not _is_int(num_params) or num_params < 0):
        raise bad("num_params", f"must be a non-negative integer, got {_show(num_params)}")
    return Metadata(
        path=path,
        model=model,
        model_kwargs={k: _from_jsonable(v) for k, v in kwargs.items()},
        species=tuple(species),
        cutoff=float(cutoff),
        dtype=dtype,
        energy_shift=shift,
        energy_scale=scale,
        repulsion=repulsion,
        module_class=module_class if isinstance(module_class, str) else None,
        num_params=num_params,
        members=members,
        ensemble=ensemble,
        calibration=calibration,
        label_statistics=stats,
        properties=targets,
    )


def read_params(directory: Path, template: Any) -> Any:
    """The parameters in ``directory`` as numpy arrays in the structure of ``template`` (a tree
    of arrays or shape structs), checked: same keys and shapes, real floating point, finite."""
    from flax import serialization

    path = directory / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parameter file missing")
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - msgpack raises several types for corrupt data
        raise PotentialFileError(f"{path}: cannot read parameters ({err})") from None
    if not isinstance(raw, Mapping):
        raise PotentialFileError(f"{path}: expected a mapping of parameters, got {_kind(raw)}")
    flat_t = _flatten(serialization.to_state_dict(template))
    flat_r = _flatten(raw)
    missing = sorted(set(flat_t) - set(flat_r))
    extra = sorted(set(flat_r) - set(flat_t))
    if missing or extra:
        raise PotentialFileError(
            f"{path}: parameters do not match the model: missing {missing[:5]}, unexpected "
            f"{extra[:5]}"
        )
    for key, t in flat_t.items():
        value = flat_r[key]
        if not isinstance(value, np.ndarray) and not np.isscalar(value):
            raise PotentialFileError(f"{path}: parameter {key} is {_kind(value)}, not an array")
        arr = np.asarray(value)
        if np.shape(arr) != tuple(np.shape(t)):
            raise PotentialFileError(
                f"{path}: parameter {key} has shape {np.shape(arr)}, model expects "
                f"{tuple(np.shape(t))}"
            )
        if arr.dtype.kind != "f":
            raise PotentialFileError(
                f"{path}: parameter {key} has dtype {arr.dtype}, expected real floating point"
            )
        if not np.all(np.isfinite(arr)):
            raise PotentialFileError(f"{path}: parameter {key} has NaN or infinite values")
    return serialization.from_state_dict(template, raw)


def _reference(value: Any, n: int, members: int | None, field: str, bad) -> np.ndarray:
    """A per-species list (S,), or for a committee also one such list per member (K, S)."""
    if members is not None and isinstance(value, list) and value and isinstance(value[0], list):
        if len(value) != members:
            raise bad(field, f"must have one row per member ({members}), got {len(value)}")
        return np.stack([_numbers(row, n, field, bad) for row in value])
    return _numbers(value, n, field, bad)


def _numbers(value: Any, n: int, field: str, bad) -> np.ndarray:
    if not isinstance(value, list) or len(value) != n or not all(_is_number(x) for x in value):
        raise bad(field, f"must be a list of {n} numbers (one per species), got {_show(value)}")
    arr = np.asarray(value, np.float64)
    if not np.all(np.isfinite(arr)):
        raise bad(field, f"must be finite, got {value}")
    return arr


def _finite_or_null(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (an absent label) as JSON null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(x), type(x).__name__
    )


def _show(x: Any) -> str:
    text = json.dumps(x) if isinstance(x, (str, int, float, bool, type(None))) else _kind(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _from_jsonable(obj: Any) -> Any:
    """JSON lists back to tuples, so module attributes stay hashable."""
    if isinstance(obj, dict):
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_from_jsonable(v) for v in obj)
    return obj


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_MEMBERS",
    "METADATA_FILE",
    "PARAMS_FILE",
    "Metadata",
    "PotentialFileError",
    "check_save_target",
    "metadata_dict",
    "read_metadata",
    "read_params",
    "save",
    "write_files",
]
