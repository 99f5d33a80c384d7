"""Few-shot image classification configs: one preset per published setting.

Select a preset with ``--config=experiments/configs/fewshot.py:NAME`` and
override any field with ``--config.FIELD=VALUE``. Presets:

* ``maml_5w1s``, ``maml_5w5s``, ``maml_20w1s``, ``maml_20w5s``: MAML on Omniglot
  (Finn, Abbeel & Levine 2017, Section 5.2 and Appendix A.1): the strided
  Conv-4 (64 filters, batch statistics), meta-batch 32 (5-way) or 16 (20-way),
  inner SGD lr 0.4 with 1 step (5-way) or 0.1 with 5 steps (20-way), Adam 1e-3,
  60,000 meta-iterations, 10 inner steps at test time, 600 test tasks.
  Published accuracies: 98.7 / 99.9 / 95.8 / 98.9.
* ``protonet_5w1s``, ``protonet_5w5s``, ``protonet_20w1s``, ``protonet_20w5s``:
  Prototypical Networks on Omniglot (Snell, Swersky & Zemel 2017, Section 3.1):
  the max-pool Conv-4 (64 filters) giving 64-d embeddings, squared Euclidean
  distance, training episodes of 60 classes with 5 queries per class and the
  test shot count, Adam 1e-3 halved every 2,000 episodes. Published
  accuracies: 98.8 / 99.7 / 96.0 / 98.9.

All presets use the Vinyals split (1200 training characters, 423 test
characters, 4 rotations each; the last 100 training characters are held out
for validation, as the 1100/100/423 sizes of MAML and learn2learn).
"""

import ml_collections

PRESETS = {
    "maml_5w1s": dict(learner="maml", num_ways=5, num_shots=1, meta_batch_size=32, inner_lr=0.4, num_steps=1),
    "maml_5w5s": dict(learner="maml", num_ways=5, num_shots=5, meta_batch_size=32, inner_lr=0.4, num_steps=1),
    "maml_20w1s": dict(learner="maml", num_ways=20, num_shots=1, meta_batch_size=16, inner_lr=0.1,
                       num_steps=5),
    "maml_20w5s": dict(learner="maml", num_ways=20, num_shots=5, meta_batch_size=16, inner_lr=0.1,
                       num_steps=5),
    "protonet_5w1s": dict(learner="protonet", num_ways=60, num_shots=1, test_num_ways=5),
    "protonet_5w5s": dict(learner="protonet", num_ways=60, num_shots=5, test_num_ways=5),
    "protonet_20w1s": dict(learner="protonet", num_ways=60, num_shots=1, test_num_ways=20),
    "protonet_20w5s": dict(learner="protonet", num_ways=60, num_shots=5, test_num_ways=20),
}

PROTONET_DEFAULTS = dict(backbone="maxpool", num_queries=5, test_num_queries=15, meta_batch_size=1,
                         lr_schedule="step", lr_decay_every=2000, num_iterations=20_000)


def get_config(preset: str = "protonet_5w1s") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = ml_collections.ConfigDict()
  config.preset = preset
  # Data.
  config.dataset = "omniglot"          # omniglot | mnist
  config.data_dir = ""                 # default: ../shared/data/<dataset> beside this repository
  config.cache_dir = ""                # decoded-image cache; default ~/.cache/metalax
  config.split = "vinyals"             # omniglot: vinyals | snell | lake
  config.num_validation = 100          # vinyals: characters held out of training for validation
  # Learner and backbone.
  config.learner = "maml"              # maml fomaml metasgd anil reptile imaml protonet matching knn r2d2 blackbox
  config.backbone = "strided"          # Conv-4 variant: strided | maxpool
  config.hidden = 64
  config.norm = "batch"                # batch (batch statistics) | layer | group | none
  config.conv_impl = "patches"         # Conv-4 convolutions: patches (batched GEMMs) | xla (lax.conv)
  config.init_encoder = ""             # metric learners: start from a representation run's encoder (its workdir)
  # Episodes (test_* = 0: the same as training).
  config.num_ways = 5
  config.num_shots = 1
  config.num_queries = 15
  config.test_num_ways = 0
  config.test_num_shots = 0
  config.test_num_queries = 0
  config.meta_batch_size = 32
  config.tasks_per_chunk = 0          # meta-gradient over chunks of this many tasks (less memory); 0: all at once
  # Gradient-based learners.
  config.inner_lr = 0.4
  config.num_steps = 1
  config.test_num_steps = 10
  config.imaml_reg = 2.0
  # Optimisation.
  config.outer_lr = 1e-3
  config.lr_schedule = "constant"      # constant | step (halve every lr_decay_every iterations) | cosine
  config.lr_decay_every = 2000
  config.num_iterations = 60_000
  config.steps_per_call = 100
  # Validation, checkpoints and test.
  config.eval_every = 1000             # validate and checkpoint every this many iterations
  config.num_valid_episodes = 200
  config.num_test_episodes = 600
  config.eval_batch_size = 50          # episodes evaluated at once
  config.seed = 0
  config.update(PROTONET_DEFAULTS if preset.startswith("protonet") else {})
  config.update(PRESETS[preset])
  return config
