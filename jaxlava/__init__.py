"""jaxlava: LLaVA-RLHF (SFT+, fact-augmented reward model, PPO) in JAX / Flax NNX."""
from jaxlava.config import LlavaConfig, TextConfig, VisionConfig
from jaxlava.data.processor import LlavaProcessor
from jaxlava.hf import from_pretrained, save_pretrained
from jaxlava.model import Lora, LlavaModel
from jaxlava.generate import GenerateOutput, generate  # noqa: E402  (the function shadows the submodule name)

__all__ = ["LlavaConfig", "TextConfig", "VisionConfig", "LlavaModel", "Lora", "LlavaProcessor", "from_pretrained",
           "save_pretrained", "generate", "GenerateOutput"]
