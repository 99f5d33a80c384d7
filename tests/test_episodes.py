"""Tests for metalax.episodes: validity, uniformity, and jit/vmap agreement."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from metalax import augment as augment_lib
from metalax import episodes as episodes_lib
from metalax import types
from metalax.data import images as images_lib
from metalax.episodes import ordered_subsets
from metalax.episodes import sample_episode
from metalax.episodes import sample_episodes

NUM_CLASSES, NUM_PER_CLASS = 12, 10
WAYS, SHOTS, QUERIES = 5, 2, 3


def _images():
  """``[C, K, 1, 1, 2]``: image ``[c, k]`` has channels ``(c, k)``, saying where it came from."""
  grid = np.stack(np.meshgrid(np.arange(NUM_CLASSES), np.arange(NUM_PER_CLASS), indexing="ij"),
                  axis=-1)
  return jnp.asarray(grid[:, :, None, None, :], dtype=jnp.float32)


def _ids(inputs):
  """[..., n, 1, 1, 2] -> (classes [..., n], examples [..., n]) as ints."""
  ids = np.asarray(inputs).reshape(inputs.shape[:-3] + (2,)).astype(int)
  return ids[..., 0], ids[..., 1]


# Compiled once per set of static arguments; the tests reuse the same counts and
# shapes so that compilation (slow on a busy CPU) happens few times.
_sample_one = jax.jit(sample_episode, static_argnums=(2, 3, 4, 5))
_sample_many = jax.jit(sample_episodes, static_argnums=(2, 3, 4, 5, 6))


def _check_valid(episode, ways, shots, queries):
  """Checks an episode, or a batch of them; returns the class of each label ``[..., ways]``."""
  episode = jax.tree.map(np.asarray, episode)
  batch = episode.support.labels.shape[:-1]
  support_class, support_example = _ids(episode.support.inputs)
  query_class, query_example = _ids(episode.query.inputs)
  assert episode.support.labels.dtype == np.int32 and episode.query.labels.dtype == np.int32
  assert np.all(episode.support.labels == np.repeat(np.arange(ways), shots))
  assert np.all(episode.query.labels == np.repeat(np.arange(ways), queries))
  support_class = support_class.reshape(batch + (ways, shots))
  query_class = query_class.reshape(batch + (ways, queries))
  label_class = support_class[..., 0]
  # One class per label, the same in support and query.
  assert np.all(support_class == label_class[..., None])
  assert np.all(query_class == label_class[..., None])
  # Distinct classes per episode.
  assert np.all(np.diff(np.sort(label_class, -1), axis=-1) != 0)
  # Distinct examples per class, across support and query (so they never overlap).
  examples = np.concatenate([support_example.reshape(batch + (ways, shots)),
                             query_example.reshape(batch + (ways, queries))], -1)
  assert np.all(np.diff(np.sort(examples, -1), axis=-1) != 0)
  return label_class


NUM_EPISODES = 3000
EPISODES_KEY = 42


@pytest.fixture(scope="module")
def episodes():
  """Many episodes from one fixed key, shared by the statistical tests."""
  return jax.tree.map(np.asarray, _sample_many(jax.random.key(EPISODES_KEY), _images(),
                                               NUM_EPISODES, WAYS, SHOTS, QUERIES))


class TestSampleEpisode:

  def test_shapes_and_types(self):
    episode = sample_episode(jax.random.key(0), _images(), WAYS, SHOTS, QUERIES)
    assert isinstance(episode, types.Episode)
    types.check_episode(episode)
    assert episode.support.inputs.shape == (WAYS * SHOTS, 1, 1, 2)
    assert episode.query.inputs.shape == (WAYS * QUERIES, 1, 1, 2)
    assert episode.support.inputs.dtype == jnp.float32
    _check_valid(episode, WAYS, SHOTS, QUERIES)

  def test_raw_uint32_keys_and_containers(self):
    images = _images()
    raw = _sample_one(jax.random.PRNGKey(3), images, WAYS, SHOTS, QUERIES)
    _check_valid(raw, WAYS, SHOTS, QUERIES)
    plain = sample_episode(jax.random.key(3), images, WAYS, SHOTS, QUERIES)
    wrapped = sample_episode(jax.random.key(3), images_lib.class_images(images),
                             WAYS, SHOTS, QUERIES)
    jax.tree.map(np.testing.assert_array_equal, plain, wrapped)

  def test_many_episodes_valid(self, episodes):
    _check_valid(episodes, WAYS, SHOTS, QUERIES)

  def test_all_classes_and_all_examples(self):
    # num_ways = num_classes and num_shots + num_queries = num_per_class.
    episode = _sample_one(jax.random.key(2), _images(), NUM_CLASSES, 4, NUM_PER_CLASS - 4)
    label_class = _check_valid(episode, NUM_CLASSES, 4, NUM_PER_CLASS - 4)
    assert sorted(label_class.tolist()) == list(range(NUM_CLASSES))

  def test_jit_matches_eager(self):
    key = jax.random.key(4)
    eager = sample_episode(key, _images(), WAYS, SHOTS, QUERIES)
    jitted = _sample_one(key, _images(), WAYS, SHOTS, QUERIES)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)

  def test_batched_matches_python_loop(self, episodes):
    # The jitted, vmapped batch against eager single episodes with the split keys.
    assert episodes.support.inputs.shape == (NUM_EPISODES, WAYS * SHOTS, 1, 1, 2)
    assert episodes.query.labels.shape == (NUM_EPISODES, WAYS * QUERIES)
    types.check_episode(episodes, batch_dims=1)
    keys = jax.random.split(jax.random.key(EPISODES_KEY), NUM_EPISODES)
    for b in (0, 1, 2, NUM_EPISODES - 1):
      single = sample_episode(keys[b], _images(), WAYS, SHOTS, QUERIES)
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[b], y), episodes, single)

  def test_different_keys_differ(self):
    first = _sample_one(jax.random.key(0), _images(), WAYS, SHOTS, QUERIES)
    second = _sample_one(jax.random.key(1), _images(), WAYS, SHOTS, QUERIES)
    assert not np.array_equal(first.support.inputs, second.support.inputs)


def test_ordered_subsets_are_exactly_uniform():
  """Every ordered k-subset of [0, n) is equally likely (chi-square over all of them)."""
  sizes, size = (5, 3), 3
  draw = jax.jit(jax.vmap(lambda key: ordered_subsets(key, jnp.array(sizes, jnp.int32), size)))
  subsets = np.asarray(draw(jax.random.split(jax.random.key(3), 6000)))  # [6000, rows, size]
  for row, n in enumerate(sizes):
    codes = subsets[:, row] @ (n ** np.arange(size))
    possible = sorted(np.dot(p, n ** np.arange(size))
                      for p in itertools.permutations(range(n), size))
    assert set(codes.tolist()) <= set(possible)
    counts = np.array([np.sum(codes == code) for code in possible])
    assert stats.chisquare(counts).pvalue > 1e-3


class TestUniformity:
  """Frequencies over many episodes against the uniform law (chi-square, fixed keys)."""

  NUM_EPISODES = NUM_EPISODES

  def test_classes_uniform(self, episodes):
    support_class, _ = _ids(episodes.support.inputs)
    label_class = support_class.reshape(self.NUM_EPISODES, WAYS, SHOTS)[:, :, 0]
    counts = np.bincount(label_class.ravel(), minlength=NUM_CLASSES)
    assert stats.chisquare(counts).pvalue > 1e-3
    # Which class gets label 0 (and label WAYS - 1) is uniform too.
    for label in (0, WAYS - 1):
      counts = np.bincount(label_class[:, label], minlength=NUM_CLASSES)
      assert stats.chisquare(counts).pvalue > 1e-3

  def test_labels_are_uniform_permutations(self, episodes):
    support_class, _ = _ids(episodes.support.inputs)
    label_class = support_class.reshape(self.NUM_EPISODES, WAYS, SHOTS)[:, :, 0]
    # Given two fixed classes both in an episode, each order of their labels is equally likely.
    both = (label_class == 0).any(1) & (label_class == 1).any(1)
    first_lower = (np.argmax(label_class == 0, 1) < np.argmax(label_class == 1, 1))[both]
    assert stats.binomtest(int(first_lower.sum()), int(both.sum())).pvalue > 1e-3

  def test_examples_uniform_in_support_and_query(self, episodes):
    for batch, per_class in ((episodes.support, SHOTS), (episodes.query, QUERIES)):
      classes, examples = _ids(batch.inputs)
      counts = np.zeros((NUM_CLASSES, NUM_PER_CLASS))
      np.add.at(counts, (classes.ravel(), examples.ravel()), 1)
      # Every (class, example) pair is equally likely; per class, examples uniform.
      assert stats.chisquare(counts.ravel()).pvalue > 1e-3
      expected = self.NUM_EPISODES * WAYS / NUM_CLASSES * per_class / NUM_PER_CLASS
      # Binomial tolerance: 5 standard deviations around the expected count.
      p = WAYS / NUM_CLASSES * per_class / NUM_PER_CLASS
      tolerance = 5 * np.sqrt(self.NUM_EPISODES * p * (1 - p))
      assert np.all(np.abs(counts - expected) < tolerance)

  def test_support_query_never_overlap(self, episodes):
    support_class, support_example = _ids(episodes.support.inputs)
    query_class, query_example = _ids(episodes.query.inputs)
    support = support_class * NUM_PER_CLASS + support_example
    query = query_class * NUM_PER_CLASS + query_example
    overlap = (support[:, :, None] == query[:, None, :]).any((1, 2))
    assert not overlap.any()


class TestAugment:

  def test_applied_to_every_image_with_its_own_key(self):
    def augment(key, image):
      return image + jax.random.uniform(key, (), minval=100.0, maxval=200.0)

    plain = _sample_one(jax.random.key(0), _images(), WAYS, SHOTS, QUERIES)
    augmented = _sample_one(jax.random.key(0), _images(), WAYS, SHOTS, QUERIES, augment)
    support_shift = np.asarray(augmented.support.inputs - plain.support.inputs)[:, 0, 0, 0]
    query_shift = np.asarray(augmented.query.inputs - plain.query.inputs)[:, 0, 0, 0]
    shifts = np.concatenate([support_shift, query_shift])
    assert np.all((shifts >= 100) & (shifts <= 200))
    assert len(np.unique(shifts)) == shifts.size

  def test_shape_changing_augment_under_jit(self):
    images = jnp.zeros((6, 5, 4, 4, 1), jnp.uint8)
    crop = lambda key, image: jax.lax.dynamic_slice(
        image, (jax.random.randint(key, (), 0, 2), 0, 0), (3, 4, 1))
    episodes = _sample_many(jax.random.key(0), images, 3, 2, 1, 2, crop)
    assert episodes.support.inputs.shape == (3, 2, 3, 4, 1)
    assert episodes.query.inputs.shape == (3, 4, 3, 4, 1)
    assert episodes.query.inputs.dtype == jnp.uint8  # the images' dtype is kept


RAGGED_COUNTS = (3, 8, 5, 4, 6, 3)
RAGGED_EPISODES = 4000


def _ragged():
  """Class ``c`` has ``RAGGED_COUNTS[c]`` images; image channels are ``(c, k)``."""
  labels = np.repeat(np.arange(len(RAGGED_COUNTS)), RAGGED_COUNTS)
  within = np.concatenate([np.arange(count) for count in RAGGED_COUNTS])
  images = np.stack([labels, within], -1).reshape(-1, 1, 1, 2).astype(np.float32)
  return images_lib.ragged_class_images(images, RAGGED_COUNTS)


@pytest.fixture(scope="module")
def ragged_episodes():
  return jax.tree.map(np.asarray, _sample_many(jax.random.key(1), _ragged(), RAGGED_EPISODES,
                                               3, 1, 2))


class TestRagged:

  def test_valid_episodes(self, ragged_episodes):
    label_class = _check_valid(ragged_episodes, 3, 1, 2)
    _, examples = _ids(ragged_episodes.query.inputs)
    assert np.all(examples < np.asarray(RAGGED_COUNTS)[np.repeat(label_class, 2, axis=-1)])

  def test_uniform_classes_and_examples(self, ragged_episodes):
    support_classes, _ = _ids(ragged_episodes.support.inputs)
    assert stats.chisquare(np.bincount(support_classes.ravel())).pvalue > 1e-3
    classes, examples = _ids(np.concatenate([ragged_episodes.support.inputs,
                                             ragged_episodes.query.inputs], 1))
    for c, count in enumerate(RAGGED_COUNTS):
      hist = np.bincount(examples[classes == c], minlength=count)
      assert hist.size == count
      assert stats.chisquare(hist).pvalue > 1e-3

  def test_jit_vmap_and_loop_agree(self, ragged_episodes):
    keys = jax.random.split(jax.random.key(1), RAGGED_EPISODES)
    for b in (0, 1, RAGGED_EPISODES - 1):
      single = sample_episode(keys[b], _ragged(), 3, 1, 2)  # eager
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[b], y), ragged_episodes, single)

  def test_smallest_class_limits_counts(self):
    with pytest.raises(ValueError, match="smallest class \\('0'\\) has 3"):
      sample_episode(jax.random.key(0), _ragged(), 2, 2, 2)


class TestValidation:

  @pytest.mark.parametrize("ways, shots, queries, message", [
      (13, 1, 1, "num_ways=13 needs at least 13 classes, but the images have 12"),
      (5, 6, 5, "6 \\+ 5 = 11 distinct examples per class are needed, .* num_per_class = 10"),
      (0, 1, 1, "must be positive, got num_ways=0"),
      (5, 0, 1, "must be positive, got num_ways=5, num_shots=0"),
      (5, 1, -1, "num_queries=-1"),
  ])
  def test_bad_counts(self, ways, shots, queries, message):
    with pytest.raises(ValueError, match=message):
      sample_episode(jax.random.key(0), _images(), ways, shots, queries)
    with pytest.raises(ValueError, match=message):
      sample_episodes(jax.random.key(0), _images(), 2, ways, shots, queries)

  def test_non_static_counts(self):
    with pytest.raises(ValueError, match="num_shots must be a static Python int"):
      sample_episode(jax.random.key(0), _images(), 5, 1.0, 1)

  def test_bad_images_and_num_tasks(self):
    with pytest.raises(ValueError, match="num_classes, num_per_class, H, W, C"):
      sample_episode(jax.random.key(0), jnp.zeros((4, 3)), 2, 1, 1)
    with pytest.raises(ValueError, match="num_tasks must be a positive static int"):
      sample_episodes(jax.random.key(0), _images(), 0, 2, 1, 1)

  def test_raised_at_trace_time_under_jit(self):
    sample = jax.jit(sample_episode, static_argnums=(2, 3, 4))
    with pytest.raises(ValueError, match="num_ways=20"):
      sample(jax.random.key(0), _images(), 20, 1, 1)


class TestFlatLayout:
  """A flat image batch [N, H, W, C] is not read as [classes, per_class, ...] (it used to be, silently)."""

  @pytest.mark.parametrize("shape", [(60, 8, 8, 1), (40, 6, 6, 3)])
  def test_flat_batch_raises_with_the_layout_and_the_fix(self, shape):
    flat = jnp.zeros(shape, jnp.float32)
    message = "look like a flat batch \\[N, H, W, C\\].*\\[num_classes, num_per_class, H, W, C\\].*from_labelled"
    with pytest.raises(ValueError, match=message):
      sample_episode(jax.random.key(0), flat, 5, 1, 2)
    with pytest.raises(ValueError, match=message):
      sample_episodes(jax.random.key(0), np.zeros(shape, np.uint8), 2, 5, 1, 2)
    with pytest.raises(ValueError, match=message):
      jax.jit(sample_episode, static_argnums=(2, 3, 4))(jax.random.key(0), flat, 5, 1, 2)

  def test_grouped_data_and_feature_arrays_still_pass(self):
    labels = np.repeat(np.arange(6), 4)
    grouped = images_lib.from_labelled(np.zeros((24, 8, 8, 1), np.float32), labels)
    assert episodes_lib._validate(grouped, 3, 1, 2) is grouped
    features = jnp.zeros((6, 4, 5, 2))  # [classes, per_class, 5, 2]: the last axis is not a channel count
    assert episodes_lib._validate(features, 3, 1, 2) is features


class TestVariableEpisodes:

  def test_episode_shapes_enumerates_the_grid(self):
    shapes = episodes_lib.episode_shapes(2, 4, 1, 2, 3)
    assert shapes == tuple(episodes_lib.EpisodeShape(w, s, 3) for w in (2, 3, 4) for s in (1, 2))
    assert all(type(v) is int for shape in shapes for v in shape)

  def test_shapes_are_exactly_uniform_and_independent(self):
    min_ways, max_ways, min_shots, max_shots = 2, 5, 1, 3
    draw = jax.jit(jax.vmap(lambda key: episodes_lib._draw_shape(key, min_ways, max_ways, min_shots, max_shots)))
    keys = jax.random.split(jax.random.key(5), 6000)
    ways, shots = (np.asarray(a) for a in draw(keys))
    counts = np.zeros((4, 3))
    np.add.at(counts, (ways - min_ways, shots - min_shots), 1)
    assert counts.sum() == 6000 and counts.min() > 0  # every (ways, shots) in range, nothing outside
    assert stats.chisquare(counts.ravel()).pvalue > 1e-3
    for b in (0, 1, 5999):  # the host-side draw is the same function of the key
      shape = episodes_lib.sample_episode_shape(keys[b], min_ways, max_ways, min_shots, max_shots, 4)
      assert shape == (int(ways[b]), int(shots[b]), 4) and type(shape.num_ways) is int

  def test_variable_episodes_are_valid_and_equal_fixed_sampling(self):
    shapes = {}
    for seed in (0, 5):  # keys that draw two different shapes
      key = jax.random.key(seed)
      batch = episodes_lib.sample_variable_episodes(key, _images(), 2, 2, 3, 1, 2, 3)
      shape = episodes_lib.sample_episode_shape(jax.random.split(key)[0], 2, 3, 1, 2, 3)
      _check_valid(batch, *shape)
      shapes[shape] = (key, batch)
    assert len(shapes) > 1
    shape, (key, batch) = next(iter(shapes.items()))
    jax.tree.map(np.testing.assert_array_equal, batch,  # the documented key use (same compiled sampler)
                 episodes_lib._sample_episodes_jit(jax.random.split(key)[1], _images(), 2, *shape))

  @pytest.mark.parametrize("args, message", [
      ((2, 13, 1, 2, 3), "num_ways=13 needs at least 13 classes"),      # the largest count, whatever is drawn
      ((2, 5, 1, 8, 3), "8 \\+ 3 = 11 distinct examples"),
      ((5, 4, 1, 2, 3), "min_ways <= max_ways"),
      ((2, 5, 3, 2, 3), "min_shots <= max_shots"),
      ((0, 5, 1, 2, 3), "must be positive"),
      ((2, 5, 1, 2.0, 3), "max_shots must be a static Python int"),
  ])
  def test_bad_ranges(self, args, message):
    with pytest.raises(ValueError, match=message):
      episodes_lib.sample_variable_episodes(jax.random.key(0), _images(), 2, *args)

  def test_shape_draw_refuses_a_traced_key(self):
    with pytest.raises(ValueError, match="outside jax.jit"):
      jax.jit(lambda key: episodes_lib.sample_episode_shape(key, 2, 5, 1, 2, 3)[0])(jax.random.key(0))


def test_parsed_augmentation_applies_per_episode_to_uint8_images():
  images = np.zeros((NUM_CLASSES, NUM_PER_CLASS, 1, 2, 1), np.uint8)
  images[..., 0, 1, 0] = 255                                               # every image is [[0, 255]]
  flip = augment_lib.parse("random_flip(probability=1.0)")
  flipped = _sample_many(jax.random.key(0), images, 2, WAYS, SHOTS, QUERIES, flip)
  for batch, per_class in ((flipped.support, SHOTS), (flipped.query, QUERIES)):
    assert batch.inputs.dtype == jnp.float32 and batch.inputs.shape[-3:] == (1, 2, 1)
    np.testing.assert_array_equal(batch.inputs[..., 0, :, 0], np.broadcast_to([1.0, 0.0], batch.inputs.shape[:-3] + (2,)))
    np.testing.assert_array_equal(batch.labels, np.broadcast_to(np.repeat(np.arange(WAYS), per_class),
                                                                batch.labels.shape))
