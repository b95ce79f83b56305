"""Core plugins: the data, models, optimizers and loss every method can build on, and their recipes.

* :mod:`.data` -- the data sets (character text, MNIST-1D) behind one small batch interface.
* :mod:`.models` -- plain PyTorch models: ``GPT``, ``MLP``, ``CNN1D``.
* :mod:`.schedule` -- the warm-up + decay learning-rate factor.
* :mod:`.data_plugins` -- plugins ``tinyshakespeare`` and ``mnist1d``.
* :mod:`.model_plugins` -- plugins ``gpt``, ``mlp`` and ``cnn1d``.
* :mod:`.optim_plugins` -- plugins ``adamw`` and ``sgd``.
* :mod:`.lbfgs_plugin` -- plugin ``lbfgs`` (``torch.optim.LBFGS``, stepped with the engine's loss closure).
* :mod:`.loss_plugins` -- plugin ``cross_entropy``.

``corpora/`` holds the bundled text, ``recipes/`` the recipes (``hookmix recipes``).
"""
