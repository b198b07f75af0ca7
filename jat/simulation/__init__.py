"""Running a potential in molecular dynamics: the ASE calculator
(:mod:`jat.simulation.ase_calculator`) and JAX-MD energy functions
(:mod:`jat.simulation.jax_md`, also importable as ``jat.md``), both over the jittable skin list
of :mod:`jat.graph` and the predictor of :mod:`jat.predictor`."""
