"""Readers for reference data sets. Every reader yields :class:`Structure` objects in Å, eV,
eV/Å and eV/Å³, and raises :class:`DataError` (naming the file and the entry) on malformed input.

    for s in read_structures(["ani_gdb_s01.h5", "ani_gdb_s02.h5"], fraction=0.1):
        ...

Large sets fit in memory as a :class:`StructureTable` (``collect(read_structures(...))``): the
same structures as columns, about 0.3 kB per small molecule instead of 1.3 kB as a list.

Importing this package loads neither JAX nor h5py nor ``ase.io``.
"""

from jat.data.ani1 import list_ani1_molecules, read_ani1
from jat.data.ase_io import read_ase
from jat.data.ean import EAN_SPECIES, ean_symbols, read_ean
from jat.data.md17 import read_md17
from jat.data.neuralil import EAN_COMPOSITION, read_neuralil
from jat.data.paths import data_dir
from jat.data.qm9 import qm9pack_dir, read_exclusion_list, read_qm9
from jat.data.readers import BUILTIN, detect_format, read_structures
from jat.data.structure import DataError, Structure
from jat.data.table import StructureTable, collect

__all__ = [
    "BUILTIN",
    "EAN_COMPOSITION",
    "EAN_SPECIES",
    "DataError",
    "Structure",
    "StructureTable",
    "collect",
    "data_dir",
    "detect_format",
    "ean_symbols",
    "list_ani1_molecules",
    "read_ani1",
    "read_ase",
    "read_ean",
    "read_md17",
    "qm9pack_dir",
    "read_exclusion_list",
    "read_neuralil",
    "read_qm9",
    "read_structures",
]
