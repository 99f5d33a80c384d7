"""Sinusoid regression, the MAML paper's protocol (Finn et al. 2017, Section 5.1).

K=10 support and query points, meta-batch 25, a 2x40 ReLU MLP, Adam 1e-3 for
70,000 meta-iterations, one inner SGD step. The paper's text says inner
learning rate 0.01; the official code's default is 0.001: we use 0.01.
Override any field with ``--config.FIELD=VALUE``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Comma-separated learners to train and compare: maml, fomaml, metasgd, anil,
  # reptile, imaml, pretrained (joint training, fine-tuned at test time).
  config.learners = "maml,pretrained"
  config.seed = 0
  config.num_shots = 10            # K support points per task
  config.num_queries = 10          # query points per task during meta-training
  config.meta_batch_size = 25
  config.tasks_per_chunk = 0          # meta-gradient over chunks of this many tasks (less memory); 0: all at once
  config.hidden = (40, 40)
  config.outer_lr = 1e-3
  config.inner_lr = 0.01           # also Meta-SGD's initial rate
  config.num_steps = 1             # inner steps during meta-training
  config.num_iterations = 70_000
  config.steps_per_call = 1_000    # meta-iterations fused into one jitted call
  config.checkpoint_every = 10_000
  # iMAML
  config.imaml_reg = 1.0
  config.imaml_cg_steps = 5
  # Evaluation on held-out tasks (a key never used for training).
  config.num_eval_tasks = 600
  config.num_eval_queries = 100    # query points per held-out task
  config.eval_steps = 10           # curves over 0..eval_steps inner steps
  # The pretrained baseline fine-tunes with the best of these step sizes,
  # chosen on separate validation tasks by the MSE after eval_steps steps.
  config.pretrained_lr_grid = (0.001, 0.003, 0.01, 0.03, 0.1)
  return config
