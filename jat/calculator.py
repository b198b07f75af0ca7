"""``jat.calculator``: the ASE calculator, :mod:`jat.simulation.ase_calculator` under its old
name."""

from jat.simulation.ase_calculator import DEFAULT_SKIN, JATCalculator

__all__ = ["DEFAULT_SKIN", "JATCalculator"]
