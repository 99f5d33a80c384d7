"""Scaling out: a batch's leading axis sharded across devices and hosts, and mixed precision.

Data parallelism with JAX's own sharding (``jax.sharding``, compiled by XLA's
SPMD partitioner), nothing home-made: parameters and optimizer state are
replicated on every device, the task (or example) axis of a batch is split
across the devices of a one-axis :class:`~jax.sharding.Mesh`, and the mean over
tasks in :func:`metalax.meta.batch_loss` becomes an all-reduce. Results equal
one device's up to the order of floating-point sums.

The same code runs on one host with several devices and on several hosts
after ``jax.distributed.initialize()``: :func:`data_mesh` spans every device
of every process, and a batch sampled inside ``jit`` from a replicated key is
sampled shard by shard (JAX's default partitionable threefry), so each process
draws only its own tasks, and the same tasks whatever the number of devices.

Example:
  >>> mesh = metalax.parallel.data_mesh()                    # all devices
  >>> meta_step = metalax.meta.train_step(learner, optimizer)
  >>> step = jax.jit(lambda mp, s, episodes: meta_step(mp, s, metalax.parallel.shard_batch(episodes, mesh)),
  ...                donate_argnums=(0, 1))
  >>> meta_params, opt_state = metalax.parallel.replicate((meta_params, opt_state), mesh)
  >>> meta_params, opt_state, metrics = step(meta_params, opt_state, episodes)
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


DATA_AXIS = "data"
"""The name of the mesh axis that batches are split along."""

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def data_mesh(num_devices: int = 0, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh (axis :data:`DATA_AXIS`) over the first ``num_devices`` devices.

  Args:
    num_devices: how many devices to use; 0 for all of them (every device of
      every process after ``jax.distributed.initialize``).
    devices: the devices to choose from; default ``jax.devices()``.

  Returns:
    A :class:`~jax.sharding.Mesh` of shape ``[num_devices]``.

  Raises:
    ValueError: if ``num_devices`` is negative or more than there are devices,
      or, with several processes, not all of them.
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 0:
    raise ValueError(f"num_devices must be an int >= 0 (0 for all devices), got {num_devices!r}.")
  if num_devices > len(devices):
    raise ValueError(f"num_devices={num_devices} but there are only {len(devices)} devices: {devices}.")
  if jax.process_count() > 1 and num_devices not in (0, len(devices)):
    raise ValueError(f"with {jax.process_count()} processes the mesh must span all {len(devices)} devices; "
                     f"got num_devices={num_devices}.")
  return Mesh(np.array(devices[:num_devices or len(devices)]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """The sharding that splits the leading axis of a rank-``ndim`` array across ``mesh``."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS) if ndim else PartitionSpec())


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a whole copy of an array on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
  """Splits the leading (task or example) axis of every array in ``tree`` across ``mesh``.

  Inside ``jit`` it is a sharding constraint: XLA partitions the computation
  that produces and consumes the batch, so each device samples and processes
  its own slice. Outside ``jit`` it places the arrays (``jax.device_put``).
  Scalars are replicated. With ``mesh=None`` it returns ``tree`` unchanged, so
  one code path serves one device and many.

  Args:
    tree: a pytree of arrays, each ``[B, ...]`` with the same ``B``
      (e.g. an :class:`~metalax.types.Episode` batch, ``[B]`` episodes).
    mesh: a mesh from :func:`data_mesh`, or None.

  Returns:
    ``tree`` with the leading axis of each leaf sharded across the devices.

  Raises:
    ValueError: if ``B`` is not a multiple of the number of devices.
  """
  if mesh is None:
    return tree
  size = mesh.shape[DATA_AXIS]
  for leaf in jax.tree.leaves(tree):
    if np.ndim(leaf) and np.shape(leaf)[0] % size:
      raise ValueError(f"a batch of {np.shape(leaf)[0]} cannot be split evenly across {size} devices; use a "
                       f"batch size that is a multiple of {size}, or fewer devices (--config.num_devices).")
  shardings = jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), tree)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
    return jax.lax.with_sharding_constraint(tree, shardings)
  return jax.device_put(tree, shardings)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """A whole copy of every array in ``tree`` on each device of ``mesh`` (unchanged if ``mesh`` is None).

  Works with several processes too, provided every process passes the same
  values (as it does for parameters initialised from the same key).
  """
  if mesh is None:
    return tree
  sharding = replicated(mesh)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
    return jax.lax.with_sharding_constraint(tree, jax.tree.map(lambda _: sharding, tree))
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _global_replicated(x, sharding), tree)


def _global_replicated(x: Any, sharding: NamedSharding) -> jax.Array:
  """``x`` (the same on every process) as a global array replicated over ``sharding``'s devices."""
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  local = np.asarray(jax.device_get(_local_copy(x)))
  return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])


def _local_copy(x: Any) -> Any:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x.addressable_data(0)
  return x


def local_copy(tree: Any) -> Any:
  """Each replicated global array of ``tree`` as this process's own (fully addressable) copy.

  Use it before mixing trained parameters with arrays of this process only,
  e.g. to evaluate on every process after multi-host training. Arrays already
  fully addressable are returned as they are.
  """
  return jax.tree.map(_local_copy, tree)


def precision_dtype(name: str) -> Any:
  """The compute dtype called ``name`` (``float32``, ``bfloat16``, ``float16``).

  Raises:
    ValueError: for any other name.
  """
  if name not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
  return PRECISIONS[name]


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating-point array of ``tree`` cast to ``dtype``; integer arrays and Python numbers unchanged."""

  def cast(x):
    if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x

  return jax.tree.map(cast, tree)


def mixed_precision(fn: Callable[..., Any], compute_dtype: Any = jnp.bfloat16,
                    output_dtype: Any = jnp.float32) -> Callable[..., Any]:
  """``fn`` computing in ``compute_dtype``, with float32 inputs, outputs and gradients.

  Floating-point array arguments (parameters, inputs) are cast to
  ``compute_dtype`` on entry and floating outputs back to ``output_dtype``.
  Parameters kept in float32 outside therefore get float32 gradients (the
  transpose of a cast is a cast back), and the optimizer updates float32
  parameters: the usual "bfloat16 compute, float32 master weights".

  Args:
    fn: e.g. a learner's ``loss(meta_params, episode, **kwargs)`` or a
      multi-task loss; keyword arguments pass through uncast.
    compute_dtype: the dtype of the computation.
    output_dtype: the dtype of floating outputs.

  Returns:
    The wrapped function.

  Example:
    >>> learner = learner._replace(loss=metalax.parallel.mixed_precision(learner.loss))
  """

  def wrapped(*args, **kwargs):
    outputs = fn(*cast_floating(args, compute_dtype), **kwargs)
    return cast_floating(outputs, output_dtype)

  return wrapped


def with_precision(method: Any, precision: str) -> Any:
  """``method`` whose training objective ``method.loss`` computes in ``precision``.

  ``method`` is any NamedTuple of functions with a ``loss`` field (a
  :class:`metalax.meta.MetaLearner`: its inner loop included); its other
  functions (``adapt`` and ``predict``, used for evaluation) are left in the
  parameters' dtype. ``precision="float32"`` returns ``method`` itself.

  Raises:
    ValueError: for an unknown precision.
  """
  dtype = precision_dtype(precision)
  if dtype == jnp.float32:
    return method
  return method._replace(loss=mixed_precision(method.loss, dtype))
