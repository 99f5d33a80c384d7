"""Meta-learners (constructors returning :class:`MetaLearner`) and the generic code using them."""

from metalax.meta.base import Aux
from metalax.meta.base import MetaLearner
from metalax.meta.base import MetaParams
from metalax.meta.base import TaskParams
from metalax.meta.base import batch_loss
from metalax.meta.base import episode_loss
from metalax.meta.base import evaluate
from metalax.meta.base import query_loss
from metalax.meta.base import query_metrics
from metalax.meta.base import train_step
from metalax.meta.blackbox import EpisodeTransformer
from metalax.meta.blackbox import blackbox
from metalax.meta.imaml import imaml
from metalax.meta.maml import anil
from metalax.meta.maml import fomaml
from metalax.meta.maml import maml
from metalax.meta.maml import metasgd
from metalax.meta.metric import matching_net
from metalax.meta.metric import nearest_neighbour
from metalax.meta.metric import protonet
from metalax.meta.metric import r2d2
from metalax.meta.reptile import reptile

__all__ = (
    "Aux",
    "EpisodeTransformer",
    "MetaLearner",
    "MetaParams",
    "TaskParams",
    "anil",
    "batch_loss",
    "blackbox",
    "episode_loss",
    "evaluate",
    "fomaml",
    "imaml",
    "maml",
    "matching_net",
    "metasgd",
    "nearest_neighbour",
    "protonet",
    "query_loss",
    "query_metrics",
    "r2d2",
    "reptile",
    "train_step",
)
