"""``jat.Potential`` and what belongs to it: the value object (:mod:`.potential`), its file
format (:mod:`.files`), the checks of its inputs (:mod:`.inputs`), its results
(:mod:`.results`) and its compiled-function cache (:mod:`.compiled`)."""

from jat.dtypes import DTYPES
from jat.potential.files import FORMAT, FORMAT_VERSION, PotentialFileError
from jat.potential.potential import Potential
from jat.potential.results import MemberResults, Results

__all__ = [
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "MemberResults",
    "Potential",
    "PotentialFileError",
    "Results",
]
