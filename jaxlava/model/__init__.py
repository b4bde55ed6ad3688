"""The LLaVA model in Flax NNX."""
from jaxlava.model.layers import Lora
from jaxlava.model.llama import KVCache, positions_from_mask
from jaxlava.model.llava import LlavaModel, check_image_tokens, merge_image_features

__all__ = ["LlavaModel", "Lora", "KVCache", "positions_from_mask", "check_image_tokens", "merge_image_features"]
