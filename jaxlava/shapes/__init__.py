"""The shapes world: jaxlava's embedded default (generated images, facts, conversations, preferences, probes).

- `world.py`: the generator (`ShapesConfig`, `WORLD_SIZES`, `build_world`, `write_world`);
- `scene.py`: scenes and their rendering; `text.py`: every text the world says about a scene;
- `tokenizer.py`: the world's small BPE tokenizer; `vision.py`: stage 0, the vision tower's pretraining;
- `assets.py`: `open_world`, the one call run setup makes: the world (built on first use when allowed), its
  tokenizer, processor and model config, and stage 0 for a fresh model.
"""
from jaxlava.shapes.assets import WorldAssets, open_world

__all__ = ["WorldAssets", "open_world"]
