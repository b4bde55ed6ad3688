"""`make demo`: the most complete real pipeline on the embedded default, end to end on a CPU.

Current pipeline: build a small random LLaVA, export it in the llava-hf layout, load it back with
jaxlava and (when torch is installed) with transformers, and show that the logits agree.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from flax import nnx

import jaxlava
from jaxlava.config import LlavaConfig, TextConfig, VisionConfig


def demo_config() -> LlavaConfig:
    return LlavaConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8),
        text=TextConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2),
        image_token_index=255)


def interop_check(out_dir: str) -> float:
    cfg = demo_config()
    model = jaxlava.LlavaModel(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = np.concatenate([[1], np.full(cfg.num_image_tokens, cfg.image_token_index), rng.integers(3, 250, 8)])[None]
    mask = np.ones_like(ids)
    pixels = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ours = np.asarray(model(ids, pixels, mask))
    jaxlava.save_pretrained(model, out_dir)
    print(f"exported a {sum(x.size for x in jax_leaves(model)) / 1e6:.2f}M-parameter LLaVA to {out_dir}")
    back = np.asarray(jaxlava.from_pretrained(out_dir)(ids, pixels, mask))
    print(f"jaxlava -> HF -> jaxlava: max |logit diff| = {np.abs(back - ours).max():.2e}")
    try:
        import torch
        from transformers import LlavaForConditionalGeneration
    except ImportError:
        print("torch/transformers not installed: skipping the transformers comparison")
        return float(np.abs(back - ours).max())
    hf = LlavaForConditionalGeneration.from_pretrained(out_dir).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(pixels)).logits.numpy()
    err = float(np.abs(ref - ours).max())
    print(f"transformers LlavaForConditionalGeneration on the export: max |logit diff| = {err:.2e}")
    return err


def jax_leaves(model):
    import jax
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for the outputs (default: a temporary folder)")
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="jaxlava-demo-")
    t0 = time.time()
    err = interop_check(os.path.join(out, "hf_export"))
    print(f"demo finished in {time.time() - t0:.1f}s; {'OK' if err <= 1e-4 else 'MISMATCH'}")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
