"""First-party hookmix plugins: shared data sets, models and tasks, and one package per method.

Shared (a method package may import these; they import no method):

* :mod:`.core` -- data (tinyshakespeare, mnist1d), models (gpt, mlp, cnn1d), optimizers (adamw, sgd), cross_entropy.
* :mod:`.cifar` -- CIFAR-100 (cifar100) and the CIFAR ResNets (resnet).
* :mod:`.countdown` -- the Countdown task: data (countdown) and rewards (countdown_reward, format_reward).
* :mod:`.policies` -- decoder policies for RL: tiny_policy and hf_policy (a Hugging Face causal LM).

Methods: :mod:`.kd` (kd, dkd, teacher), :mod:`.nkd` (nkd, uskd), :mod:`.logit_std`, :mod:`.lipschitz`,
:mod:`.soft_grpo` (grpo, soft_grpo, passk). Plugins register in the ``hookmix.plugins`` entry-point group
and experiment commands in ``hookmix.commands`` (pyproject.toml); the engine never imports this package.
"""
