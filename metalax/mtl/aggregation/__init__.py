"""Gradient aggregation for multi-task learning: per-task gradients -> one update.

Per-task gradients are a pytree shaped like the parameters with a leading task
axis: every leaf is ``[T, *param_shape]``, as returned by :func:`task_gradients`
(one forward pass and ``T`` vectorised backward passes, i.e. ``jax.jacrev``),
or by ``jax.vmap(jax.grad(loss), in_axes=(None, 0))`` over per-task batches.
An aggregator maps them to one update ``[*param_shape]`` per leaf.

Interface: every constructor here returns an
``optax.experimental.aggregating.Aggregator`` -- the NamedTuple ``(init,
update)`` that optax uses for per-element gradients -- with

* ``init(params) -> state``
* ``update(task_grads, state, params=None, **extra_args) -> (update, new_state)``

so the aggregators *are* optax aggregators, with no adapter: chain them with
an optimizer through ``optax.experimental.aggregating.process(preprocessor,
aggregator, postprocessor)``, or call ``update`` directly and pass the result
to any optax optimizer. (Where the installed optax has no
``optax.experimental.aggregating``, a NamedTuple with the same two fields is
used instead.) The randomised methods (PCGrad, GradDrop) keep their PRNG key
in the state and split it at every call, as optax's noise transforms do.

Typically only the shared parameters are aggregated; task-specific heads get
the plain sum of task gradients (their gradient rows for other tasks are
zero). ``optax.transforms.partition`` does this split::

  aggregator = optax.transforms.partition(
      {"shared": metalax.mtl.pcgrad(key), "heads": metalax.mtl.linear_scalarization()},
      param_labels)
  task_losses, task_grads = metalax.mtl.task_gradients(task_losses_fn, params, batch)
  update, agg_state = aggregator.update(task_grads, agg_state, params)
  updates, opt_state = optimizer.update(update, opt_state, params)

Most methods compute task weights ``w [T]`` from the ``[T, T]`` Gram matrix of
the flattened task gradients and return ``sum_i w_i g_i``; they never build the
``[T, D]`` matrix (the Gram matrix is summed leaf by leaf). PCGrad is done in
that space too (each projected gradient is a combination of the ``g_j``).
GradDrop is elementwise.

What each method returns when all task gradients equal ``g`` (tested):
``linear_scalarization`` ``T g`` (sum), ``pcgrad`` ``T g`` (sum, as the paper),
``mgda`` ``g``, ``cagrad`` ``g`` for ``rescale=2`` (``(1+c) g / (1+c^2)`` for the
default ``rescale=1``), ``graddrop`` ``T g``, ``imtl_g`` ``g``, ``nash_mtl``
``sqrt(T) g / |g|`` clipped to norm ``max_norm``, ``aligned_mtl`` ``T g``,
``upgrad`` ``g``.

Modules: :mod:`~metalax.mtl.aggregation.base` (the interface, per-task
gradients, linear scalarisation), :mod:`~metalax.mtl.aggregation.surgery`
(PCGrad, GradDrop), :mod:`~metalax.mtl.aggregation.min_norm` (MGDA and its
solver, CAGrad), :mod:`~metalax.mtl.aggregation.balanced` (IMTL-G, Nash-MTL,
Aligned-MTL, UPGrad); each names its papers.
:mod:`~metalax.mtl.aggregation.alignment` (GradVac, ConFIG, DualProj) and
:mod:`~metalax.mtl.aggregation.fairness` (FairGrad, DB-MTL) hold the methods
that align the update with every task and that balance what each task gets.
"""


from metalax.mtl.aggregation.alignment import GradVacState
from metalax.mtl.aggregation.alignment import conflict_free
from metalax.mtl.aggregation.alignment import dualproj
from metalax.mtl.aggregation.alignment import gradvac
from metalax.mtl.aggregation.balanced import NashMTLState
from metalax.mtl.aggregation.balanced import aligned_mtl
from metalax.mtl.aggregation.balanced import imtl_g
from metalax.mtl.aggregation.balanced import nash_mtl
from metalax.mtl.aggregation.balanced import upgrad
from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import TaskGrads
from metalax.mtl.aggregation.base import linear_scalarization
from metalax.mtl.aggregation.base import task_gradient_norms
from metalax.mtl.aggregation.base import task_gradients
from metalax.mtl.aggregation.fairness import DBMTLState
from metalax.mtl.aggregation.fairness import db_mtl
from metalax.mtl.aggregation.fairness import fairgrad
from metalax.mtl.aggregation.min_norm import cagrad
from metalax.mtl.aggregation.min_norm import mgda
from metalax.mtl.aggregation.min_norm import min_norm_solver
from metalax.mtl.aggregation.surgery import GradDropState
from metalax.mtl.aggregation.surgery import PCGradState
from metalax.mtl.aggregation.surgery import graddrop
from metalax.mtl.aggregation.surgery import pcgrad

__all__ = (
    "Aggregator",
    "DBMTLState",
    "GradDropState",
    "GradVacState",
    "NashMTLState",
    "PCGradState",
    "TaskGrads",
    "aligned_mtl",
    "cagrad",
    "conflict_free",
    "db_mtl",
    "dualproj",
    "fairgrad",
    "graddrop",
    "gradvac",
    "imtl_g",
    "linear_scalarization",
    "mgda",
    "min_norm_solver",
    "nash_mtl",
    "pcgrad",
    "task_gradient_norms",
    "task_gradients",
    "upgrad",
)
