"""What a run needs from the shapes world, behind one call: `open_world(data_dir, build=...)`.

Run setup (`jaxlava.training.runs`) calls it when the model preset is `shapes`; nothing else in the library
needs to know how the world is made.
"""
from __future__ import annotations

import dataclasses
import os

from jaxlava.presets import shapes_config


class WorldMissing(FileNotFoundError):
    """The data folder holds no shapes world and building one there was not asked for."""


@dataclasses.dataclass
class WorldAssets:
    data_dir: str
    vision_pretrain_steps: int = 3000  # stage 0 (jaxlava.shapes.vision); 0 keeps a random tower

    @property
    def tokenizer(self):
        from jaxlava.shapes.tokenizer import load_tokenizer
        return load_tokenizer(os.path.join(self.data_dir, "tokenizer"))

    def model_config(self, **runtime):
        """The shapes model (`jaxlava.presets.shapes_config`) sized to the world's tokenizer."""
        from jaxlava.shapes.world import ShapesConfig, load_world_info
        tok, world = self.tokenizer, ShapesConfig.from_dict(load_world_info(self.data_dir)["config"])
        return shapes_config(len(tok), tok.convert_tokens_to_ids("<image>"), world.cell or 8).replace(**runtime)

    def processor(self, model_config):
        """The world's tokenizer with CLIP-style image preprocessing (pad to square) at the model's resolution."""
        from jaxlava.data.processor import ImagePrep, LlavaProcessor
        mc = model_config
        return LlavaProcessor(self.tokenizer, ImagePrep(mc.vision.image_size, pad_to_square=True),
                              mc.num_image_tokens, image_token_id=mc.image_token_index)

    def prepare_model(self, model) -> dict | None:
        """Stage 0 on a freshly initialised model: the pretrained small vision tower (cached in the world).
        Returns its held-out patch accuracies (None when stage 0 is off)."""
        from jaxlava.shapes.vision import VisionPretrainConfig, ensure_pretrained
        return ensure_pretrained(model, self.data_dir, VisionPretrainConfig(steps=self.vision_pretrain_steps))


def world_exists(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, "world.json"))


def open_world(data_dir: str, *, build: bool, vision_pretrain_steps: int = 3000) -> WorldAssets:
    """The shapes world in `data_dir`.  A missing world is generated when `build` is true (the default paths, or
    an explicit --build-missing) and is an error naming the folder otherwise: a mistyped --data must not turn
    into a fresh world."""
    if not world_exists(data_dir):
        if not build:
            raise WorldMissing(f"--data {data_dir}: no shapes world there (no world.json) and no converted data "
                               "either. Check the path, or pass --build-missing to generate a shapes world in it")
        from jaxlava.shapes.world import write_world
        print(f"generating the shapes world in {data_dir} ...", flush=True)
        write_world(data_dir)
    return WorldAssets(data_dir, vision_pretrain_steps)
