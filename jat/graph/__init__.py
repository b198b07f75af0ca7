"""Neighbour lists (graphs) with static shapes for jitted interatomic potentials."""

from jat.graph.neighbors import (
    Neighbors,
    NeighborSpec,
    allocate,
    build,
    grow,
    neighbor_list,
)

__all__ = ["Neighbors", "NeighborSpec", "allocate", "build", "grow", "neighbor_list"]
