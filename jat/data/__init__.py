"""Readers for reference data sets; every reader returns ASE ``Atoms`` in Å, eV, eV/Å."""

from jat.data.ean import EAN_SPECIES, ean_symbols, read_ean
from jat.data.paths import data_dir

__all__ = ["EAN_SPECIES", "data_dir", "ean_symbols", "read_ean"]
