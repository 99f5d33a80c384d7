"""The representation and surgical fine-tuning entrypoints end to end on real data, tiny configurations."""

import csv
import json
import os

import jax
import numpy as np
import pytest

import metalax
from experiments import representation
from experiments import surgical
from experiments.configs import representation as representation_config
from metalax import meta
from metalax import models

OMNIGLOT = os.path.join(representation.REPO_ROOT, "..", "shared", "data", "omniglot")
MNIST = os.path.join(representation.REPO_ROOT, "..", "shared", "data", "mnist")


def tiny(preset, **overrides):
  config = representation_config.get_config(preset)
  config.update(dict(hidden=8, num_iterations=4, steps_per_call=2, checkpoint_every=4, batch_size=16,
                     classes_per_batch=4, examples_per_class=2, num_test_episodes=20, probe_steps=10,
                     episodes=((5, 1),), review_k=6, decoder_features=(16,), projector_hidden=16, projection_dim=8,
                     num_eval_classes=20))
  config.update(overrides)
  return config


def check_outputs(path, config, results):
  assert 0.0 <= results["5way_1shot_prototype"] <= 1.0 and 0.0 <= results["linear_probe_accuracy"] <= 1.0
  assert 1.0 <= results["effective_rank"] <= 8.0
  for name in ("results.json", "run.json", "review.png", "review.csv"):
    assert os.path.exists(path / name), name
  assert os.path.exists(path / "reconstructions.png") == (config.method == "autoencoder")
  # The encoder checkpoint loads as the params of the few-shot backbone Conv4(None, hidden, backbone, norm).
  params = representation.load_encoder(str(path), config)
  embeddings = representation.make_encoder(config).apply({"params": params}, np.zeros((3, 28, 28, 1), np.float32))
  assert embeddings.shape == (3, 8)
  learner = meta.protonet(models.from_linen(representation.make_encoder(config)), num_ways=2)
  images = jax.random.uniform(jax.random.key(0), (3, 4, 28, 28, 1))
  episodes = metalax.sample_episodes(jax.random.key(1), images, 2, 2, 1, 2)
  assert meta.evaluate(learner)(learner.init(params), episodes)["accuracy"].shape == (2,)


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT), reason=f"no Omniglot archives in {OMNIGLOT}")
def test_triplet_on_omniglot_then_corrections_feed_back_into_the_probe(tmp_path):
  # The default decoded-image cache (~/.cache/metalax), shared with earlier runs, keeps this test fast.
  config = tiny("triplet_semi_hard")
  results = representation.train_and_evaluate(config, str(tmp_path / "first"))
  check_outputs(tmp_path / "first", config, results)
  record = json.loads(open(tmp_path / "first" / "metrics.jsonl").readline())
  assert {"loss", "embedding_std", "effective_rank"} <= set(record)
  table = representation.summarize({"triplet": str(tmp_path / "first")}, str(tmp_path / "table.md"))
  assert table.count("\n") == 3 and "| triplet |" in table
  representation.plot_training({"triplet": str(tmp_path / "first")}, str(tmp_path / "training.png"))
  rows = list(csv.DictReader(open(tmp_path / "first" / "review.csv")))
  rows[0]["corrected_label"] = "0"
  reviewed = tmp_path / "reviewed.csv"
  with open(reviewed, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  config = tiny("random", corrections=str(reviewed))
  results = representation.train_and_evaluate(config, str(tmp_path / "second"))
  check_outputs(tmp_path / "second", config, results)
  assert results["num_corrections"] == 1


@pytest.mark.skipif(not os.path.isdir(MNIST), reason=f"no MNIST files in {MNIST}")
def test_sparse_autoencoder_on_mnist(tmp_path):
  config = tiny("sparse", dataset="mnist")
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
    (dict(method="byol"), "method"),
    (dict(mining="hardest"), "mining"),
    (dict(examples_per_class=1, method="triplet"), "examples_per_class"),
])
def test_bad_config(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    representation.train_and_evaluate(tiny("simclr", **overrides), str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(MNIST), reason=f"no MNIST files in {MNIST}")
def test_surgical_runs_and_tables(tmp_path):
  reviewed = tmp_path / "reviewed.csv"
  reviewed.write_text("rank,index,label,prediction,loss,corrected_label\n0,7,3,5,9.0,5\n1,9,4,4,8.0,\n")
  config = representation_config.get_config("surgical")
  config.update(dict(hidden=8, num_iterations=6, steps_per_call=3, checkpoint_every=6, batch_size=32,
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


@pytest.mark.skipif(not os.path.isdir(MNIST), reason=f"no MNIST files in {MNIST}")
def test_mnist_episodes_wider_than_ten_classes_raise_before_training(tmp_path):
  with pytest.raises(ValueError, match="20-way 1-shot .* but mnist has 10 of 892"):
    representation.train_and_evaluate(tiny("simclr", dataset="mnist", episodes=((20, 1),), num_eval_classes=0),
                                      str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")
