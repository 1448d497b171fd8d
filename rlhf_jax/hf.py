"""Public Hugging Face checkpoint API: ``load_pretrained``, ``save_pretrained``, ``HFCheckpointError``.

See ``rlhf_jax/checkpoint/hf.py`` for the layout mapping and the validation performed.
"""

from rlhf_jax.checkpoint.hf import HFCheckpointError, hf_tensor_shapes, load_pretrained, save_pretrained

__all__ = ["HFCheckpointError", "hf_tensor_shapes", "load_pretrained", "save_pretrained"]
