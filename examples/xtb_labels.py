"""GFN2-xTB single points through tblite, shared by the examples that label structures.

``tblite`` (``pip install tblite``, or ``pip install -e ".[al]"``) is NOT a dependency of jat:
only ``examples/make_builtin_data.py`` and ``examples/active_learning.py`` need it. Both run as
``python examples/<name>.py``, which puts ``examples/`` on the module path, so they import this
file as ``import xtb_labels``.
"""

from __future__ import annotations

import sys

INSTALL_HINT = "pip install tblite"


def import_tblite():
    """tblite's ASE calculator class; exits with an installation hint when tblite is missing."""
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        sys.exit(
            "error: this script needs the tblite GFN2-xTB calculator, which is not a jat "
            f"dependency ({err}).\nInstall it with:  {INSTALL_HINT}"
        )
    return TBLite


def gfn2_calculator():
    """A tblite GFN2-xTB calculator for the neutral, closed-shell EAN boxes (tblite's defaults
    otherwise: accuracy 1, electronic temperature 300 K; periodic when the Atoms are)."""
    return import_tblite()(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)


def frozen(atoms):
    """A wrapped copy of ``atoms`` (``info`` cleared) holding the energy (eV), forces (eV/Å) and
    stress (eV/Å³) of ``atoms``' calculator in a ``SinglePointCalculator``, as written to extxyz.
    The calculator computes them if it has not yet (ASE caches them per configuration)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.info.clear()
    frame.wrap()
    frame.calc = SinglePointCalculator(
        frame,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(apply_constraint=False),
        stress=atoms.get_stress(),
    )
    return frame


def single_point(atoms, calc=None):
    """``atoms`` labelled with GFN2-xTB energy, forces and stress (a :func:`frozen` copy);
    ``calc`` reuses one calculator across calls (default: a new one)."""
    work = atoms.copy()
    work.calc = calc if calc is not None else gfn2_calculator()
    return frozen(work)
