"""Ask a LLaVA model about an image; the answer streams as it is decoded.

    python -m jaxlava.chat --model DIR --image FILE "What is in the picture?"

DIR is a llava-hf folder (or an original LLaVA folder with --vision-tower) that holds the tokenizer
and preprocessor files.  The question is rendered with the `llava_v1` conversation template.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Literal

import numpy as np
import tyro


@dataclasses.dataclass(kw_only=True)
class ChatArgs:
    """A question about an image, the model to ask and how to sample the answer."""
    question: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="QUESTION")]
    """the question to ask about the image"""
    model: Annotated[str, tyro.conf.arg(metavar="DIR")]
    """model folder (llava-hf layout, with tokenizer files)"""
    image: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """image file (PNG/JPEG); omit for a text-only question"""
    vision_tower: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """CLIP folder, for original-LLaVA checkpoints only"""
    template: str = "llava_v1"
    """conversation template name"""
    max_new_tokens: int = 256
    """most tokens to generate"""
    temperature: float = 0.0
    """sampling temperature; 0 = greedy"""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest set of tokens with this much probability (1 = all)"""
    top_k: int = 0
    """keep the k most likely tokens (0 = all)"""
    seed: int = 0
    """sampling seed"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """parameter dtype"""
    chunk: int = 8
    """tokens decoded between two screen updates"""


class Streamer:
    """Prints the decoded text of one row as chunks of token ids arrive (handles multi-token characters)."""

    def __init__(self, tokenizer, stops: set[int], out=sys.stdout):
        self.tok, self.stops, self.out = tokenizer, stops, out
        self.ids: list[int] = []
        self.shown = ""
        self.finished = False

    def __call__(self, tokens: np.ndarray, done: np.ndarray) -> None:
        for t in tokens[0].tolist():
            if self.finished:
                break
            if t in self.stops:
                self.finished = True
                break
            self.ids.append(int(t))
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not self.finished:  # a character split over tokens: wait for the rest
            return
        self.out.write(text[len(self.shown):])
        self.out.flush()
        self.shown = text


def main(argv=None) -> int:
    args = tyro.cli(ChatArgs, args=argv, prog="python -m jaxlava.chat", description=__doc__)
    import jax

    import jaxlava
    from jaxlava.data.processor import LlavaProcessor  # lazy: pulls in the tokenizer / image stack
    from jaxlava.data.templates import render_prompt

    model = jaxlava.from_pretrained(args.model, dtype=args.dtype, vision_tower_path=args.vision_tower)
    processor = LlavaProcessor.from_pretrained(args.model, model.config)
    image = None
    if args.image:
        from PIL import Image
        try:
            image = Image.open(args.image).convert("RGB")
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot read image {args.image}: {e}")
    prompt = render_prompt(args.template, args.question, has_image=image is not None)
    batch = processor(prompt, image)
    tok = processor.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    streamer = Streamer(tok, {eos} if eos is not None else set())
    jaxlava.generate(model, batch["input_ids"][None] if batch["input_ids"].ndim == 1 else batch["input_ids"],
                     _pixels(batch), _mask(batch), max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, eos_token_id=eos,
                     pad_token_id=pad, rng=jax.random.key(args.seed), stream=streamer, chunk=args.chunk)
    print()
    return 0


def _mask(batch):
    m = batch.get("attention_mask")
    if m is None:
        return None
    return m[None] if m.ndim == 1 else m


def _pixels(batch):
    px = batch.get("pixel_values")
    if px is None:
        return None
    return px[None] if px.ndim == 3 else px


if __name__ == "__main__":
    sys.exit(main())
