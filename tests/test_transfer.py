"""Fine-tuning masks through optax partitioning, and the hard-example review round trip."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalax import models
from metalax import transfer

MODEL = models.Conv4(num_outputs=3, hidden=4)
PARAMS = jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))["params"]
IMAGES = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
LABELS = jnp.array([0, 1, 2, 0, 1, 2])


def test_paths_and_masks():
  paths = jax.tree.leaves(transfer.parameter_paths(PARAMS))
  assert "conv_0/kernel" in paths and "head/bias" in paths
  mask = transfer.trainable_mask(PARAMS, transfer.CONV4_BLOCKS["block2"])
  selected = sorted(p for p, m in zip(paths, jax.tree.leaves(mask)) if m)
  assert selected == ["conv_1/bias", "conv_1/kernel", "norm_1/bias", "norm_1/scale"]
  assert all(jax.tree.leaves(transfer.trainable_mask(PARAMS, "all")))
  assert not any(jax.tree.leaves(transfer.trainable_mask(PARAMS, None)))
  assert sum(jax.tree.leaves(transfer.trainable_mask(PARAMS, "*/kernel"))) == 5
  assert sum(jax.tree.leaves(transfer.trainable_mask(PARAMS, lambda p: p.endswith("bias")))) == 9
  with pytest.raises(ValueError, match="selects no parameter"):
    transfer.trainable_mask(PARAMS, "conv_9")
  with pytest.raises(ValueError, match="selects no parameter"):
    transfer.trainable_mask(PARAMS, "conv")        # whole components only


@pytest.mark.parametrize("selection", ["all", "head", ["conv_0", "norm_0"]])
def test_finetune_moves_only_selected_leaves_and_matches_plain_optimizer(selection):
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  tx = transfer.finetune_optimizer(optimizer, PARAMS, selection)
  loss = jax.jit(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      MODEL.apply({"params": p}, IMAGES), LABELS)))
  params, state = PARAMS, tx.init(PARAMS)
  reference, reference_state = PARAMS, optimizer.init(PARAMS)
  mask = transfer.trainable_mask(PARAMS, selection)
  grad, update, reference_update = jax.jit(jax.grad(loss)), jax.jit(tx.update), jax.jit(optimizer.update)
  for _ in range(3):
    updates, state = update(grad(params), state, params)
    params = optax.apply_updates(params, updates)
    # The reference: the plain optimizer, with the frozen leaves' gradients irrelevant as they never move.
    ref_updates, reference_state = reference_update(grad(reference), reference_state, reference)
    reference = optax.apply_updates(reference, jax.tree.map(lambda u, m: u if m else jnp.zeros_like(u),
                                                            ref_updates, mask))
  for new, old, ref, m in zip(jax.tree.leaves(params), jax.tree.leaves(PARAMS), jax.tree.leaves(reference),
                              jax.tree.leaves(mask)):
    if m:
      if selection != "all" or np.any(np.asarray(old) != 0) or np.any(np.asarray(new) != 0):
        np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_array_equal(new, old)
  assert float(loss(params)) < float(loss(PARAMS))


def test_review_round_trip(tmp_path):
  losses = np.array([0.1, 3.0, 0.5, 2.0, 3.0, 0.2])
  np.testing.assert_array_equal(transfer.hardest_examples(losses, 3), [1, 4, 3])
  png, path = transfer.write_review(str(tmp_path), np.asarray(IMAGES), np.asarray(LABELS), losses, 3,
                                    predictions=np.array([1, 2, 0, 1, 0, 0]))
  assert (tmp_path / "review.png").stat().st_size > 0
  rows = list(csv.DictReader(open(path)))
  assert [int(r["index"]) for r in rows] == [1, 4, 3]
  assert [int(r["label"]) for r in rows] == [1, 1, 0] and rows[0]["prediction"] == "2"
  assert transfer.read_corrections(path) == {}
  rows[0]["corrected_label"], rows[2]["corrected_label"] = "2", "1"
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=transfer.REVIEW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  corrections = transfer.read_corrections(path)
  assert corrections == {1: 2, 3: 1}
  np.testing.assert_array_equal(transfer.apply_corrections(LABELS, corrections, num_classes=3), [0, 2, 2, 1, 1, 2])
  with pytest.raises(ValueError, match="outside"):
    transfer.apply_corrections(LABELS, {1: 7}, num_classes=3)
  with pytest.raises(FileNotFoundError):
    transfer.read_corrections(str(tmp_path / "missing.csv"))
  grid = transfer.image_grid(np.asarray(IMAGES), num_columns=4)
  assert grid.shape == (2 * 29 + 1, 4 * 29 + 1, 1)


def test_review_leaves_matplotlib_backend_alone(tmp_path):
  import matplotlib
  before = matplotlib.get_backend()
  try:
    matplotlib.use("svg")   # e.g. a notebook's backend; write_review must not switch it to Agg
    png, _ = transfer.write_review(str(tmp_path), np.asarray(IMAGES), np.asarray(LABELS),
                                   np.arange(6.0), 2)
    assert matplotlib.get_backend() == "svg"
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  finally:
    matplotlib.use(before)
