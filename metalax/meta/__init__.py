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
from metalax.meta.bmaml import bmaml
from metalax.meta.bmaml import svgd_direction
from metalax.meta.imaml import imaml
from metalax.meta.maml import anil
from metalax.meta.maml import fomaml
from metalax.meta.maml import maml
from metalax.meta.maml import metasgd
from metalax.meta.metric import matching_net
from metalax.meta.metric import nearest_neighbour
from metalax.meta.metric import protonet
from metalax.meta.metric import r2d2
from metalax.meta.neural_process import Gaussian
from metalax.meta.neural_process import NPModel
from metalax.meta.neural_process import NeuralProcess
from metalax.meta.neural_process import anp
from metalax.meta.neural_process import cnp
from metalax.meta.neural_process import gaussian_kl
from metalax.meta.neural_process import latent_np
from metalax.meta.neural_process import neural_process
from metalax.meta.neural_process import np_model
from metalax.meta.reptile import reptile
from metalax.meta.snail import SNAIL
from metalax.meta.snail import snail
from metalax.meta.versa import VersaAmortisation
from metalax.meta.versa import versa

__all__ = (
    "Aux",
    "EpisodeTransformer",
    "Gaussian",
    "MetaLearner",
    "MetaParams",
    "NPModel",
    "NeuralProcess",
    "SNAIL",
    "TaskParams",
    "VersaAmortisation",
    "anil",
    "anp",
    "batch_loss",
    "blackbox",
    "bmaml",
    "cnp",
    "episode_loss",
    "evaluate",
    "fomaml",
    "gaussian_kl",
    "imaml",
    "latent_np",
    "maml",
    "matching_net",
    "metasgd",
    "nearest_neighbour",
    "neural_process",
    "np_model",
    "protonet",
    "query_loss",
    "query_metrics",
    "r2d2",
    "reptile",
    "snail",
    "svgd_direction",
    "train_step",
    "versa",
)
