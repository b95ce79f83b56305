"""Decoder policies for RL methods: the soft-policy protocol, a tiny decoder and a Hugging Face adapter.

* :mod:`.policy` -- ``SoftPolicy`` protocol, ``TinyPolicy`` (pre-LN decoder, KV cache), ``left_pad``.
* :mod:`.hf_adapter` -- Hugging Face causal-LM adapter (``transformers`` optional, imported lazily).
* :mod:`.capabilities` -- ``POLICY``, provided by the model plugins below.
* :mod:`.model_plugins` -- plugins ``tiny_policy`` and ``hf_policy``.
"""
