"""Integrations with optional packages; each submodule imports its package on import.

- :mod:`torchkron.integrations.hf`: transformers ``save_pretrained``/``from_pretrained``.
- :mod:`torchkron.integrations.peft`: LoRA on top of ``KronLinear``.
"""
