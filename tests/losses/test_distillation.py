"""Tests for metalax.losses.distillation against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax.losses import distillation


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _kl_numpy(student, teacher, temperature):
  p = _softmax(teacher / temperature)
  q = _softmax(student / temperature)
  return temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)


RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(4, 5)).astype(np.float32)
TEACHER = (2 * RNG.normal(size=(4, 5))).astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_kl_matches_numpy(temperature):
  losses = distillation.distillation_kl(jnp.asarray(STUDENT), jnp.asarray(TEACHER), temperature)
  assert losses.shape == (4,)
  np.testing.assert_allclose(losses, _kl_numpy(STUDENT, TEACHER, temperature), rtol=1e-5,
                             atol=1e-6)


def test_distillation_kl_gradient_is_hinton_form_and_teacher_is_constant():
  temperature = 3.0
  fn = lambda s, t: jnp.sum(distillation.distillation_kl(s, t, temperature))
  student_grad, teacher_grad = jax.grad(fn, argnums=(0, 1))(jnp.asarray(STUDENT),
                                                            jnp.asarray(TEACHER))
  # T^2 * (1/T) (q - p): the T^2 factor keeps gradients O(1) in T (Hinton et al., 2015).
  expected = temperature * (_softmax(STUDENT / temperature) - _softmax(TEACHER / temperature))
  np.testing.assert_allclose(student_grad, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(teacher_grad, 0.0)


def test_distillation_kl_zero_for_identical_and_masked_classes():
  np.testing.assert_allclose(distillation.distillation_kl(STUDENT, STUDENT, 2.0), 0.0, atol=1e-6)
  teacher = jnp.array([[0.0, 1.0, -jnp.inf]])
  student = jnp.array([[0.5, 0.5, 3.0]])
  loss = distillation.distillation_kl(student, teacher, 1.0)
  p = _softmax(np.array([[0.0, 1.0]]))
  q = _softmax(np.array([[0.5, 0.5, 3.0]]))[:, :2]
  np.testing.assert_allclose(loss, np.sum(p * (np.log(p) - np.log(q)), -1), rtol=1e-5)
  assert np.all(np.isfinite(jax.grad(lambda s: distillation.distillation_kl(s, teacher)[0])(
      student)))


def test_multi_teacher_distillation_per_task_columns():
  students = [jnp.asarray(STUDENT), jnp.asarray(STUDENT[:, :3])]
  teachers = [jnp.asarray(TEACHER), jnp.asarray(TEACHER[:, :3])]
  losses = distillation.multi_teacher_distillation(students, teachers, temperature=[2.0, 1.0])
  assert losses.shape == (4, 2)
  np.testing.assert_allclose(losses[:, 0], _kl_numpy(STUDENT, TEACHER, 2.0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(losses[:, 1], _kl_numpy(STUDENT[:, :3], TEACHER[:, :3], 1.0),
                             rtol=1e-5, atol=1e-6)
  stacked = distillation.multi_teacher_distillation(
      jnp.stack([STUDENT] * 2), jnp.stack([TEACHER] * 2), temperature=2.0)
  np.testing.assert_allclose(stacked[:, 1], _kl_numpy(STUDENT, TEACHER, 2.0), rtol=1e-5,
                             atol=1e-6)


def test_distillation_errors():
  with pytest.raises(ValueError, match="num_classes"):
    distillation.distillation_kl(jnp.ones((2, 3)), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="temperature"):
    distillation.distillation_kl(jnp.ones((2, 3)), jnp.ones((2, 3)), 0.0)
  with pytest.raises(ValueError, match="one teacher per"):
    distillation.multi_teacher_distillation([jnp.ones((2, 3))], [])
  with pytest.raises(ValueError, match="2 entries"):
    distillation.multi_teacher_distillation([jnp.ones((2, 3))] * 2, [jnp.ones((2, 3))] * 2,
                                            temperature=[1.0])
