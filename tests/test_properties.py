"""Property targets: the networks' property channels, the properties formed from them (QM9
properties, dipoles), their labels, losses and metrics in training, and the potential's
results and files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jat.models import MODELS, HyperparameterError


def _toy_graph():
    """Three real atoms and one padded slot, with a symmetric edge list (receivers sorted)."""
    species = jnp.array([0, 1, 1, -1])
    pairs = [(1, 0), (2, 0), (0, 1), (0, 2)]
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.1, 0.0], [0.0, 0.0, 0.0]])
    senders = jnp.array([s for s, _ in pairs] + [3, 3])
    receivers = jnp.array([r for _, r in pairs] + [3, 3])
    vectors = jnp.asarray(pos[np.asarray(senders)] - pos[np.asarray(receivers)])
    mask = jnp.array([True] * 4 + [False] * 2)
    return species, vectors, senders, receivers, mask


@pytest.mark.parametrize("name", sorted(MODELS))
def test_property_outputs_of_every_network(name):
    args = _toy_graph()
    plain = MODELS[name](num_species=2, cutoff=3.0)
    net = MODELS[name](num_species=2, cutoff=3.0, property_outputs=3)
    p0 = plain.init(jax.random.PRNGKey(0), *args)
    p = net.init(jax.random.PRNGKey(0), *args)
    # a separate head: the energy network's parameters are those of the plain model
    assert set(p["params"]) == set(p0["params"]) | {"properties"}
    same = jax.tree.map(lambda a, b: a.shape == b.shape, p0["params"],
                        {k: v for k, v in p["params"].items() if k != "properties"})
    assert all(jax.tree.leaves(same))
    out = net.apply(p, *args)
    assert out["properties"].shape == (4, 3)
    assert np.all(np.asarray(out["properties"][3]) == 0.0)  # padded atom
    assert np.allclose(out["energy"], plain.apply(p0, *args))
    assert np.ndim(plain.apply(p0, *args)) == 1  # P = 0: the energies alone, as before


def test_property_outputs_range_checked():
    with pytest.raises(HyperparameterError, match="property_outputs"):
        MODELS["schnet"](num_species=1, cutoff=3.0, property_outputs=-1)


# ---------------------------------------------------------------------------------------------
# targets, normalisation, configuration

import dataclasses  # noqa: E402
import itertools  # noqa: E402

from jat import graph as jgraph  # noqa: E402
from jat.config import ConfigError, config_from_dict  # noqa: E402
from jat.properties import (  # noqa: E402
    Target,
    assign_channels,
    constrained_charges,
    fit_target,
    property_values,
)


@pytest.fixture(scope="module")
def qm9_molecules():
    from jat.data.qm9 import read_qm9

    return list(itertools.islice(read_qm9("qm9pack"), 24))


def _padded_graph(structures, n_slots, species, fill=0):
    """A disjoint graph of ``structures`` (free space) padded to ``n_slots`` atoms each, with
    ``fill`` further all-padding structures."""
    lookup = {x: k for k, x in enumerate(species)}
    m = len(structures) + fill
    z = np.full((m, n_slots), -1, np.int32)
    pos = np.zeros((m, n_slots, 3))
    for r, s in enumerate(structures):
        z[r, : s.n_atoms] = [lookup[x] for x in s.symbols]
        pos[r, : s.n_atoms] = s.positions
    spec = jgraph.allocate(pos, 5.0, None, (False,) * 3, z >= 0)
    nb = jax.vmap(jgraph.build, in_axes=(0, None, 0, None))(jnp.asarray(pos), None,
                                                            jnp.asarray(z >= 0), spec)
    cell = jnp.zeros((m, 3, 3))
    return jgraph.batch_graph(jnp.asarray(z), jnp.asarray(pos), cell, nb.senders, nb.receivers,
                              nb.shifts, nb.mask)


def test_constrained_charges_sum_to_the_total_charge(qm9_molecules):
    g = _padded_graph(qm9_molecules[:3], 12, ["H", "C", "N", "O", "F"], fill=1)
    q = jax.random.normal(jax.random.PRNGKey(1), (g.n_nodes,))
    for charge in (None, jnp.array([0.0, 1.0, -2.0, 0.0])):
        qc = constrained_charges(q, g, charge)
        sums = jax.ops.segment_sum(qc, g.node_graph, g.n_graphs)
        want = np.zeros(4) if charge is None else np.array(charge)
        want[3] = 0.0  # the all-padding structure has no atoms
        assert np.allclose(sums, want, atol=1e-5)
        assert np.all(np.asarray(qc)[~np.asarray(g.node_mask)] == 0.0)


def test_fitted_normalisation(qm9_molecules):
    species = ["H", "C", "N", "O", "F"]
    ext = fit_target(Target("U0", "extensive", 0), qm9_molecules, species)
    counts = np.array([[s.symbols.count(x) for x in species] for s in qm9_molecules])
    u0 = np.array([s.properties["U0"] for s in qm9_molecules])
    residual = u0 - counts @ np.asarray(ext.shift)
    assert np.sqrt(np.mean(residual**2)) < 0.05 * np.std(u0)  # the reference takes the bulk
    gap = fit_target(Target("gap", "intensive", 1), qm9_molecules, species)
    labels = [s.properties["gap"] for s in qm9_molecules]
    assert gap.offset == pytest.approx(np.mean(labels)) and gap.scale == pytest.approx(
        np.std(labels))
    with pytest.raises(ValueError, match="no training structure has the property 'nope'"):
        fit_target(Target("nope", "intensive", 0), qm9_molecules, species)
    assert Target.from_dict(ext.to_dict()) == ext


def test_channels_and_values_of_a_charge_only_dipole(qm9_molecules):
    targets, p = assign_channels([("mu", "dipole"), ("gap", "intensive")])
    assert [t.channel for t in targets] == [0, 1] and p == 2
    head, p_head = assign_channels([("mu", "dipole"), ("gap", "intensive")], dipole_head=True)
    assert head[0].channel == -1 and head[1].channel == 0 and p_head == 1
    g = _padded_graph(qm9_molecules[:2], 10, ["H", "C", "N", "O", "F"])
    props = jax.random.normal(jax.random.PRNGKey(0), (g.n_nodes, 2))
    v = property_values(targets, {"properties": props}, g)
    assert v["mu"].shape == (2, 3) and v["gap"].shape == (2,)


@pytest.mark.parametrize(
    ("entry", "where", "what"),
    [
        ({"key": "mu", "kind": "vector"}, "loss.properties.1.kind", "must be one of"),
        ({"kind": "dipole"}, "loss.properties.1.key", "required"),
        ({"key": "gap", "kind": "intensive", "wieght": 2}, "loss.properties.1.wieght",
         "did you mean 'weight'"),
        ({"key": "U0", "kind": "extensive"}, "loss.properties.1.key", "already the target"),
    ],
)
def test_config_errors_name_the_entry(entry, where, what):
    loss = {"properties": [{"key": "U0", "kind": "extensive"}, entry]}
    with pytest.raises(ConfigError, match=what) as err:
        config_from_dict({"loss": loss})
    assert where in str(err.value)


def test_property_targets_alone_are_a_loss():
    cfg = config_from_dict({"loss": {"energy_weight": 0, "forces_weight": 0,
                                     "properties": [{"key": "mu", "kind": "dipole"}]}})
    assert cfg.loss.properties[0].alpha == 0.01
    with pytest.raises(ConfigError, match="nothing would be trained"):
        config_from_dict({"loss": {"energy_weight": 0, "forces_weight": 0, "properties": [
            {"key": "mu", "kind": "dipole", "weight": 0}]}})


# ---------------------------------------------------------------------------------------------
# labels, losses and metrics of the training steps

import jat  # noqa: E402
from jat.training import optim, steps  # noqa: E402
from jat.training.dataset import build_dataset  # noqa: E402

QM9_SPECIES = ["H", "C", "N", "O"]
ENTRIES = [("mu", "dipole"), ("gap", "intensive"), ("U0", "extensive"),
           ("mulliken_charges", "atomic")]


def _setup(molecules, dipole_head=True):
    """A small PaiNN potential with the four kinds of target fitted on ``molecules``, and the
    loss spec training them alone."""
    targets, p = assign_channels(ENTRIES, dipole_head)
    targets = tuple(fit_target(t, molecules, QM9_SPECIES) for t in targets)
    pot = jat.Potential.create("painn", QM9_SPECIES, 4.0, features=8, interactions=1,
                               dipole_head=dipole_head, property_outputs=p)
    terms = tuple(steps.PropertyTerm(t, 1.0, 0.05) for t in targets)
    spec = steps.LossSpec(forces_weight=0.0, energy_weight=0.0, properties=terms)
    return pot, targets, spec


def _eval_sums(pot, spec, data, batch_size):
    model, scale = pot.energy_model, jnp.asarray(pot.energy_scale, jnp.float32)
    step = jax.jit(lambda params, batch: steps.eval_step(model, spec, False, params, scale,
                                                         batch))
    parts = [step(pot.params, data.buckets[b].batch(rows, batch_size, jnp.float32))
             for b, rows in data.batches(batch_size)]
    return steps.reduce_sums(parts, spec)


def test_padding_changes_no_property_loss_or_metric(qm9_molecules):
    mols = [m for m in qm9_molecules if set(m.symbols) <= set(QM9_SPECIES)][:7]
    pot, targets, spec = _setup(mols)
    shift = np.zeros(len(QM9_SPECIES))
    tight = build_dataset(mols, QM9_SPECIES, 4.0, shift, [max(m.n_atoms for m in mols)],
                          targets)
    loose = build_dataset(mols, QM9_SPECIES, 4.0, shift, [32], targets)
    a = _eval_sums(pot, spec, tight, 7)  # one full batch
    b = _eval_sums(pot, spec, loose, 4)  # more atom slots, and a batch with a fill row
    assert set(a) >= {"mu_mae", "gap_mae", "U0_rmse", "mulliken_charges_mae", "loss"}
    # neither energies nor forces are trained: no error of the untrained energy is reported
    assert not {"energy_mae", "energy_atom_mae", "forces_mae"} & set(a)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_training_steps_lower_the_dipole_loss(qm9_molecules):
    mols = [m for m in qm9_molecules if set(m.symbols) <= set(QM9_SPECIES)][:20]
    pot, targets, spec = _setup(mols)
    spec = dataclasses.replace(spec, properties=spec.properties[:1])  # the dipole alone
    data = build_dataset(mols, QM9_SPECIES, 4.0, np.zeros(4), [32], targets[:1])
    tx = optim.optimizer("adam", 0.0, None)
    step = steps.compiled_train_step(pot.energy_model, tx, spec, None)
    state = steps.initial_state(pot.params, tx)
    scale = jnp.asarray(pot.energy_scale, jnp.float32)
    batch = data.buckets[0].batch(np.arange(len(mols)), len(mols), jnp.float32)
    losses = []
    for _ in range(15):
        state, metrics = step(state, scale, batch, 1e-2)
        losses.append(float(metrics["loss_mu"]) / float(metrics["weight"]))
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------
# the potential: results, symmetries, files, the ASE calculator, evaluation

import json  # noqa: E402

from scipy.spatial.transform import Rotation  # noqa: E402


@pytest.fixture(scope="module")
def property_potential(qm9_molecules):
    mols = [m for m in qm9_molecules if set(m.symbols) <= set(QM9_SPECIES)]
    pot, targets, _ = _setup(mols)
    return pot.with_properties(targets), mols


def test_dipole_rotates_and_properties_are_invariant(property_potential):
    pot, mols = property_potential
    atoms = mols[6].to_atoms()
    assert len(atoms) > 3
    r0 = pot.compute(atoms, forces=False)
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([3.0, -7.0, 11.0])
    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = moved[perm]
    for other, order in ((moved, np.arange(len(atoms))), (shuffled, perm)):
        r = pot.compute(other, forces=False)
        assert np.allclose(r.dipole, rot @ r0.dipole, atol=2e-5)  # equivariant, translation free
        for key in ("mu", "gap", "U0"):
            assert r.properties[key] == pytest.approx(r0.properties[key], rel=1e-5, abs=1e-5)
        assert np.allclose(r.properties["mulliken_charges"],
                           r0.properties["mulliken_charges"][order], atol=1e-5)
    assert r0.properties["mu"] == pytest.approx(np.linalg.norm(r0.dipole))
    # one structure or a padded batch: the same values
    batch = pot.compute_batch([mols[1].to_atoms(), atoms], forces=False)
    assert np.allclose(batch[1].dipole, r0.dipole, atol=1e-5)
    assert batch[1].properties["U0"] == pytest.approx(r0.properties["U0"], rel=1e-7)


def test_save_load_keeps_targets_and_old_files_load(property_potential, tmp_path):
    pot, mols = property_potential
    pot.save(tmp_path / "p")
    back = jat.Potential.load(tmp_path / "p")
    assert back.properties == pot.properties and back.properties[2].shift
    a = mols[3].to_atoms()
    assert back.compute(a).properties["U0"] == pytest.approx(pot.compute(a).properties["U0"])
    # a file written before property targets existed: no "properties" entry
    plain = jat.Potential.create("schnet", QM9_SPECIES, 4.0, features=8, interactions=1)
    plain.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["properties"]
    meta_path.write_text(json.dumps(meta))
    old = jat.Potential.load(tmp_path / "old")
    assert old.properties == () and old.compute(a).properties == {}
    assert old.compute(a).dipole is None


def test_ase_dipole_and_evaluation_in_debye(property_potential):
    from jat.evaluation import error_metrics, evaluate
    from jat.properties import DEBYE_PER_EA

    pot, mols = property_potential
    atoms = mols[4].to_atoms()
    atoms.calc = pot.calculator()
    assert "dipole" in atoms.calc.implemented_properties
    assert np.allclose(atoms.get_dipole_moment(), pot.compute(atoms).dipole, atol=1e-5)
    figures = error_metrics(evaluate(pot, mols[:5], batch_size=4))["properties"]
    mu = [abs(pot.compute(m.to_atoms()).properties["mu"] - m.properties["mu"]) for m in mols[:5]]
    assert figures["mu"]["mae"] == pytest.approx(np.mean(mu), rel=1e-5)
    assert figures["mu"]["mae_debye"] == pytest.approx(np.mean(mu) * DEBYE_PER_EA, rel=1e-5)
    assert {"gap", "U0", "mulliken_charges"} <= set(figures)


# ---------------------------------------------------------------------------------------------
# the QM9 recipe's split


def test_split_rest_to_test_is_seeded_and_complete(qm9_molecules):
    from jat.training.splits import split_indices

    a = split_indices(qm9_molecules, validation=4, test="rest", n_train=15, seed=3)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [15, 4, 5]
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(len(qm9_molecules)))
    assert a == split_indices(qm9_molecules, validation=4, test="rest", n_train=15, seed=3)
    assert a != split_indices(qm9_molecules, validation=4, test="rest", n_train=15, seed=4)
    cfg = config_from_dict({"data": {"split": {"n_train": 110000, "validation": 10000,
                                               "test": "rest"}}})
    assert cfg.data.split.test == "rest"
    with pytest.raises(ConfigError, match="needs split.n_train"):
        config_from_dict({"data": {"split": {"validation": 10000, "test": "rest"}}})


# ---------------------------------------------------------------------------------------------
# a training run end to end


def test_charge_only_run_trains_saves_and_reports_its_targets(tmp_path):
    """SchNet (invariant: the charge-only dipole) on mu and gap alone, from a qm9pack CSV file
    cut to 25 molecules: the best potential carries the targets, the summary their MAEs."""
    import csv

    from jat.data.qm9 import qm9pack_dir
    from jat.training import train

    with (qm9pack_dir() / "qm9_part1.csv").open(newline="") as f, (
        tmp_path / "qm9_part1.csv"
    ).open("w", newline="") as g:
        csv.writer(g).writerows(itertools.islice(csv.reader(f), 26))
    cfg = config_from_dict({
        "name": "props", "run_dir": str(tmp_path / "run"),
        "data": {"train": str(tmp_path / "qm9_part1.csv"), "format": "qm9",
                 "split": {"n_train": 16, "validation": 5, "test": "rest"}},
        "model": {"name": "schnet", "cutoff": 4.0, "features": 8, "interactions": 1},
        "loss": {"forces_weight": 0.0, "energy_weight": 0.0, "properties": [
            {"key": "mu", "kind": "dipole", "alpha": 0.05},
            {"key": "gap", "kind": "intensive", "alpha": 0.1, "weight": 0.5}]},
        "training": {"epochs": 2, "batch_size": 8, "max_buckets": 1},
        "logging": {"progress": "none"},
    })
    result = train(cfg)
    assert result.summary["n_structures"]["test"] == 4
    for name in ("validation", "test"):
        figures = result.summary[name]
        assert np.isfinite(figures["mu_mae"]) and np.isfinite(figures["gap_rmse"]), name
    best = jat.Potential.load(tmp_path / "run")
    assert [(t.key, t.kind, t.channel) for t in best.properties] == [
        ("mu", "dipole", 0), ("gap", "intensive", 1)]
    assert best.module.property_outputs == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "val_mu_mae" in rows[-1] and "train_loss_mu" in rows[-1]


def test_a_missing_label_has_weight_zero(qm9_molecules):
    mols = [m for m in qm9_molecules if set(m.symbols) <= set(QM9_SPECIES)][:4]
    props = {k: v for k, v in mols[1].properties.items() if k not in ("gap", "mulliken_charges")}
    mols[1] = dataclasses.replace(mols[1], properties=props)
    targets, _ = assign_channels(ENTRIES, True)
    targets = tuple(fit_target(t, mols, QM9_SPECIES) for t in targets)
    data = build_dataset(mols, QM9_SPECIES, 4.0, np.zeros(4), [32], targets)
    bucket = data.buckets[0]
    row = int(np.flatnonzero(bucket.index == 1)[0])
    batch = bucket.batch(np.arange(4), 6, jnp.float32)  # two fill rows
    w = np.asarray(batch.property_weight["gap"])
    assert w[row] == 0 and w.sum() == 3 and np.asarray(batch.property_weight["mu"]).sum() == 4
    assert np.asarray(batch.properties["mulliken_charges"]).shape == (6 * 32,)
    # labels less their reference: U0 minus the per-species shift, in float64 on the host
    z = [QM9_SPECIES.index(x) for x in mols[0].symbols]
    r0 = int(np.flatnonzero(bucket.index == 0)[0])
    assert bucket.properties["U0"][r0] == pytest.approx(
        mols[0].properties["U0"] - np.sum(np.asarray(targets[2].shift)[z]))
