"""Flax models mapping a graph (species, edge vectors, senders, receivers, masks) to per-atom
outputs.

Every model has the call signature
``model(species (N,), edge_vectors (E, 3), senders (E,), receivers (E,), edge_mask (E,)) -> (N,)``
(or a mapping with ``"energy"`` (N,) and further per-atom outputs, e.g. PaiNN's dipole head)
and never sees absolute positions.
"""

from jat.models.bessel import BesselNN
from jat.models.energy import EnergyModel
from jat.models.hyper import HyperparameterError
from jat.models.jat import JAT, JATLayer
from jat.models.painn import PaiNN
from jat.models.repulsion import ZBL
from jat.models.schnet import SchNet, SchNetInteraction

MODELS = {"jat": JAT, "schnet": SchNet, "bessel": BesselNN, "painn": PaiNN}

__all__ = [
    "JAT",
    "MODELS",
    "ZBL",
    "BesselNN",
    "EnergyModel",
    "HyperparameterError",
    "JATLayer",
    "PaiNN",
    "SchNet",
    "SchNetInteraction",
]
