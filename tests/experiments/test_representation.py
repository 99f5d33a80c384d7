"""The representation and surgical fine-tuning entrypoints end to end, tiny configurations.

Generated data everywhere; the runs on the real archives run when METALAX_DATA_DIR holds them.
"""

import csv
import json
import os

import jax
import numpy as np
import pytest

import metalax
from experiments import reporting
from experiments import representation
from experiments import surgical
from experiments.configs import representation as representation_config
from metalax import meta
from metalax import models

from experiments.configs import surgical as surgical_config
from tests.experiments import synthetic

DATA_DIR = os.environ.get("METALAX_DATA_DIR", "")
OMNIGLOT = os.path.join(DATA_DIR, "omniglot")
MNIST = os.path.join(DATA_DIR, "mnist")
real_omniglot = pytest.mark.skipif(not DATA_DIR or not os.path.isdir(OMNIGLOT),
                                   reason="real Omniglot archives: set METALAX_DATA_DIR")
real_mnist = pytest.mark.skipif(not DATA_DIR or not os.path.isdir(MNIST), reason="real MNIST files: set METALAX_DATA_DIR")
SYNTHETIC = "tests.experiments.synthetic:load"


def tiny(preset, **overrides):
  config = representation_config.get_config(preset)
  config.update(dict(hidden=8, num_iterations=4, steps_per_call=2, checkpoint_every=4, batch_size=16,
                     classes_per_batch=4, examples_per_class=2, num_test_episodes=20, probe_steps=10,
                     episodes=((5, 1),), review_k=6, decoder_features=(16,), projector_hidden=16, projection_dim=8,
                     num_eval_classes=20, conv_impl="xla"))
  config.update(overrides)
  return config


def check_outputs(path, config, results, image_shape=(28, 28, 1)):
  ways, shots = config.episodes[0]
  assert 0.0 <= results[f"{ways}way_{shots}shot_prototype"] <= 1.0 and 0.0 <= results["linear_probe_accuracy"] <= 1.0
  assert 1.0 <= results["effective_rank"] <= 8.0
  for name in ("results.json", "run.json", "review.png", "review.csv"):
    assert os.path.exists(path / name), name
  assert os.path.exists(path / "reconstructions.png") == (config.loss == "autoencoder")
  # The encoder checkpoint loads as the params of the few-shot embedding model with the same fields.
  params = representation.load_encoder(str(path), config, image_shape)
  embeddings = representation.make_encoder(config).apply({"params": params}, np.zeros((3, *image_shape), np.float32))
  assert embeddings.shape == (3, 8)
  learner = meta.protonet(models.from_linen(representation.make_encoder(config)), num_ways=2)
  images = jax.random.uniform(jax.random.key(0), (3, 4, *image_shape))
  episodes = metalax.sample_episodes(jax.random.key(1), images, 2, 2, 1, 2)
  assert meta.evaluate(learner)(learner.init(params), episodes)["accuracy"].shape == (2,)


def test_triplet_then_corrections_feed_back_into_the_probe(tmp_path):
  config = tiny("triplet_semi_hard", dataset=SYNTHETIC, episodes=((3, 1),), num_queries=2, classes_per_batch=3)
  results = representation.train_and_evaluate(config, str(tmp_path / "first"))
  check_outputs(tmp_path / "first", config, results, synthetic.IMAGE_SHAPE)
  record = json.loads(open(tmp_path / "first" / "metrics.jsonl").readline())
  assert {"loss", "embedding_std", "effective_rank"} <= set(record)
  table = reporting.representation_table({"triplet": str(tmp_path / "first")}, str(tmp_path / "table.md"))
  assert table.count("\n") == 3 and "| triplet |" in table
  reporting.plot_representation_training({"triplet": str(tmp_path / "first")}, str(tmp_path / "training.png"))
  rows = list(csv.DictReader(open(tmp_path / "first" / "review.csv")))
  rows[0]["corrected_label"] = "0"
  reviewed = tmp_path / "reviewed.csv"
  with open(reviewed, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  config = tiny("random", corrections=str(reviewed), dataset=SYNTHETIC, episodes=((3, 1),), num_queries=2)
  results = representation.train_and_evaluate(config, str(tmp_path / "second"))
  check_outputs(tmp_path / "second", config, results, synthetic.IMAGE_SHAPE)
  assert results["num_corrections"] == 1


# Every objective x two augmentation lists: tests/experiments/test_representation_matrix.py; here one end to end.
@pytest.mark.parametrize("loss, augment", [
    ("supcon", ("random_resized_crop(scale=(0.5, 1.0))", "mixup(0.2)")),
])
def test_losses_with_augmentations(tmp_path, loss, augment):
  config = tiny("simclr", loss=loss, augment=augment, dataset=SYNTHETIC, episodes=((3, 1),), num_queries=2,
                classes_per_batch=3, review_k=4)
  results = representation.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["linear_probe_accuracy"])


@real_mnist
def test_sparse_autoencoder_on_mnist(tmp_path):
  config = tiny("sparse", dataset="mnist", data_dir=MNIST)
  check_outputs(tmp_path, config, representation.train_and_evaluate(config, str(tmp_path)))


@real_omniglot
def test_triplet_on_omniglot(tmp_path):
  config = tiny("triplet_semi_hard", data_dir=OMNIGLOT)
  check_outputs(tmp_path, config, representation.train_and_evaluate(config, str(tmp_path)))


def test_probe_and_few_shot_on_separable_embeddings():
  config = tiny("random", num_test_episodes=50)
  centres = np.random.default_rng(0).normal(size=(12, 1, 6))
  embeddings = (centres + 0.01 * np.random.default_rng(1).normal(size=(12, 10, 6))).astype(np.float32)
  accuracy = representation.few_shot_accuracy(embeddings, jax.random.key(0), 5, 1, 3, 50)
  assert accuracy["prototype"][0] == 1.0 and accuracy["nearest_neighbour"][0] == 1.0
  config.probe_steps = 200
  assert representation.linear_probe(embeddings, config)["accuracy"] == 1.0


@pytest.mark.parametrize("overrides, match", [
    (dict(loss="byol_typo"), "unknown 'byol_typo'"),
    (dict(mining="hardest"), "mining"),
    (dict(examples_per_class=1, loss="triplet"), "examples_per_class"),
    (dict(augment=("random_flop",)), "unknown operation"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_config(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    representation.train_and_evaluate(tiny("simclr", **overrides), str(tmp_path))


def test_surgical_runs_and_tables(tmp_path, monkeypatch):
  reviewed = tmp_path / "reviewed.csv"
  reviewed.write_text("rank,index,label,prediction,loss,corrected_label\n0,7,3,5,9.0,5\n1,9,4,4,8.0,\n")
  config = surgical_config.get_config()
  config.update(dict(data_dir=write_mnist(tmp_path / "mnist"), download=False, hidden=8, num_iterations=6, steps_per_call=3, checkpoint_every=6, batch_size=32,
                     finetune_steps=3, num_seeds=2, target_shots=2, review_k=6, selections=("none", "block1", "head"),
                     shifts=("inverted", "permuted"), num_train_examples=2000, num_test_examples=500,
                     validation_shots=3, finetune_lrs=(1e-3, 1e-2),
                     corrections=str(reviewed)))
  results = surgical.train_and_evaluate(config, str(tmp_path))
  table = results["table"]
  assert set(table) == {"inverted", "permuted"} and set(table["inverted"]) == {"none", "block1", "head"}
  assert all(0 <= cell["mean"] <= 1 for row in table.values() for cell in row.values())
  assert set(table["permuted"]["head"]["lrs"]) <= {1e-3, 1e-2} and table["permuted"]["none"]["lrs"] == [0.0, 0.0]
  assert list(results["corrected_examples"]) == [7] and results["corrected_examples"][7]["label"] == 5
  for name in ("results.json", "surgical.md", "review.png", "review.csv", "metrics.jsonl"):
    assert os.path.exists(tmp_path / name), name


def test_mnist_episodes_wider_than_ten_classes_raise_before_training(tmp_path):
  config = tiny("simclr", dataset="mnist", data_dir=write_mnist(tmp_path / "mnist", per_class=900),
                download=False, episodes=((20, 1),), num_eval_classes=0)
  with pytest.raises(ValueError, match="20-way 1-shot .* but mnist has 10 of 900"):
    representation.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "checkpoints")


def write_mnist(directory, per_class=60):
  """Generated MNIST IDX files (``per_class`` images of each digit in train and test) in ``directory``."""
  import gzip
  import struct
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix in ("train", "t10k"):
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = rng.integers(0, 256, (labels.size, 28, 28), dtype=np.uint8)
    with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
      f.write(struct.pack(">IIII", 2051, labels.size, 28, 28) + images.tobytes())
    with gzip.open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
      f.write(struct.pack(">II", 2049, labels.size) + labels.tobytes())
  return str(directory)
