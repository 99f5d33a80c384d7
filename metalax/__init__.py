"""metalax: meta-learning and multi-task learning as pure JAX functions."""

from metalax import augment
from metalax import data
from metalax import episodes
from metalax import hyper
from metalax import losses
from metalax import meta
from metalax import metrics
from metalax import mtl
from metalax import transfer
from metalax import parallel
from metalax import models
from metalax import types
from metalax.episodes import sample_episode
from metalax.episodes import sample_episodes
from metalax.types import Batch
from metalax.types import Episode

__version__ = "0.1.0"

__all__ = (
    "Batch",
    "Episode",
    "augment",
    "data",
    "episodes",
    "hyper",
    "losses",
    "meta",
    "metrics",
    "models",
    "mtl",
    "parallel",
    "sample_episode",
    "sample_episodes",
    "transfer",
    "types",
)
