"""`LlavaProcessor`: text + images -> input_ids (with `<image>` expanded), attention_mask, pixel_values.

Image preparation matches transformers' CLIPImageProcessor (shortest-side bicubic resize with PIL,
centre crop, rescale, normalise), optionally preceded by LLaVA's pad-to-square with the mean colour.
"""
from __future__ import annotations

import io
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from jaxlava.data.templates import IMAGE, has_image_token, tokenize_with_spans
from jaxlava.fileio import write_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    pass


def load_image(src) -> Image.Image:
    """PIL image from a path, encoded bytes or a PIL image; RGB."""
    try:
        if isinstance(src, Image.Image):
            img = src
        elif isinstance(src, np.ndarray):
            img = Image.fromarray(np.asarray(src, np.uint8))
        elif isinstance(src, (bytes, bytearray)):
            img = Image.open(io.BytesIO(src))
        else:
            img = Image.open(src)
        img.load()
    except Exception as e:  # PIL raises many types for bad files
        name = src if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>"
        raise ImageError(f"cannot decode image {name}: {e}") from None
    return img.convert("RGB")


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class ImagePrep:
    def __init__(self, size: int, crop: int | None = None, mean=CLIP_MEAN, std=CLIP_STD, pad_to_square=True,
                 resample: int = Image.BICUBIC, rescale: float = 1 / 255):
        self.size, self.crop = size, crop or size
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad_to_square, self.resample, self.rescale = pad_to_square, resample, rescale

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(int(m * 255) for m in self.mean)

    def __call__(self, src) -> np.ndarray:
        img = load_image(src)
        if self.pad_to_square:
            img = expand_to_square(img, self.fill)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)
        nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
        img = img.resize((nw, nh), resample=self.resample)
        top, left = (nh - self.crop) // 2, (nw - self.crop) // 2
        arr = np.asarray(img, dtype=np.uint8)
        if top < 0 or left < 0:  # crop larger than the image: zero-pad like transformers' center_crop
            padded = np.zeros((max(nh, self.crop), max(nw, self.crop), 3), np.uint8)
            pt, pl = max(-top, 0), max(-left, 0)
            padded[pt:pt + nh, pl:pl + nw] = arr
            arr, top, left = padded, max(top, 0), max(left, 0)
        arr = arr[top:top + self.crop, left:left + self.crop].astype(np.float32) * np.float32(self.rescale)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return arr.transpose(2, 0, 1).astype(np.float32)


def num_image_tokens_from(proc: dict, crop: int, where: str = "processor_config.json") -> int:
    """Placeholders per image: (image_size / patch_size)^2, plus the CLS token for the "full" strategy."""
    if "num_image_tokens" in proc:
        return int(proc["num_image_tokens"])
    if "patch_size" not in proc:
        raise ValueError(f"{where}: processor_config.json gives neither num_image_tokens nor patch_size")
    n = (int(crop) // int(proc["patch_size"])) ** 2
    extra = int(proc.get("num_additional_image_tokens", 1))
    return n + (extra if proc.get("vision_feature_select_strategy", "default") == "full" else 0)


class LlavaProcessor:
    """Tokenizer + image preparation for a LLaVA model."""

    def __init__(self, tokenizer, image_prep: ImagePrep, num_image_tokens: int, image_token_id: int | None = None):
        self.tokenizer, self.image_prep, self.num_image_tokens = tokenizer, image_prep, num_image_tokens
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.image_token_id = int(image_token_id)
        self.padding_side = "right"

    @classmethod
    def from_pretrained(cls, path: str, model_config=None, *, pad_to_square: bool | None = None,
                        num_image_tokens: int | None = None, image_token_id: int | None = None):
        """HF tokenizer files + preprocessor_config.json (+ processor_config.json) from `path`.  With a
        `model_config` (jaxlava LlavaConfig) the placeholder count and id come from the model."""
        tok = load_tokenizer(path)
        proc = _read(os.path.join(path, "processor_config.json"), missing_ok=True)
        pp_path = os.path.join(path, "preprocessor_config.json")
        if not os.path.exists(pp_path) and isinstance(proc.get("image_processor"), dict):
            pp = proc["image_processor"]  # transformers 5 nests it in processor_config.json
        else:
            pp = _read(pp_path)
        size = pp.get("size", {})
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = pp.get("crop_size", size)
        crop = crop.get("height") if isinstance(crop, dict) else crop
        if pad_to_square is None:
            pad_to_square = pp.get("jaxlava_pad_to_square", pp.get("image_aspect_ratio", "pad") == "pad")
        prep = ImagePrep(int(size), int(crop), pp.get("image_mean", CLIP_MEAN), pp.get("image_std", CLIP_STD),
                         pad_to_square, int(pp.get("resample", Image.BICUBIC)), float(pp.get("rescale_factor", 1 / 255)))
        if model_config is not None:
            num_image_tokens = num_image_tokens or model_config.num_image_tokens
            image_token_id = model_config.image_token_index if image_token_id is None else image_token_id
        if num_image_tokens is None:
            num_image_tokens = num_image_tokens_from(proc, int(crop), path)
        if image_token_id is None and not has_image_token(tok):
            raise ValueError(f"{path}: the tokenizer has no {IMAGE} token; pass model_config or image_token_id")
        self = cls(tok, prep, num_image_tokens, image_token_id)
        self.source_path = path
        return self

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        p = self.image_prep
        _write(os.path.join(path, "preprocessor_config.json"), {
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": p.size},
            "do_center_crop": True, "crop_size": {"height": p.crop, "width": p.crop}, "do_rescale": True,
            "rescale_factor": p.rescale, "do_normalize": True, "image_mean": list(p.mean), "image_std": list(p.std),
            "resample": int(p.resample), "do_convert_rgb": True, "jaxlava_pad_to_square": p.pad_to_square})
        _write(os.path.join(path, "processor_config.json"), {
            "processor_class": "LlavaProcessor", "image_token": IMAGE, "num_image_tokens": self.num_image_tokens})

    def encode_text(self, text: str) -> list[int]:
        ids, _ = tokenize_with_spans(self.tokenizer, text, [], image_token_id=self.image_token_id,
                                     num_image_tokens=self.num_image_tokens)
        return ids

    def __call__(self, text: str | Sequence[str], images=None, *, padding_side: str | None = None,
                 pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Batch of texts (+ one image or None per text) -> input_ids/attention_mask [B,T] (+ pixel_values)."""
        padding_side = padding_side or self.padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and (isinstance(images, (Image.Image, bytes, str, os.PathLike))
                                   or isinstance(images, np.ndarray)):
            images = [images]  # one image for one text
        if images is not None and len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images (one image slot per text)")
        seqs = [self.encode_text(t) for t in texts]
        T = max(len(s) for s in seqs) if pad_to is None else pad_to
        if any(len(s) > T for s in seqs):
            raise ValueError(f"a sequence of {max(len(s) for s in seqs)} tokens does not fit pad_to={T}")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = np.full((len(seqs), T), pad, np.int32)
        mask = np.zeros((len(seqs), T), np.int32)
        for b, s in enumerate(seqs):
            sl = slice(0, len(s)) if padding_side == "right" else slice(T - len(s), T)
            ids[b, sl], mask[b, sl] = s, 1
        out = {"input_ids": ids, "attention_mask": mask}
        if images is not None:
            out["pixel_values"] = self.images(images)
        return out

    def images(self, images: Sequence) -> np.ndarray:
        """One slot per row; None gives a zero image (a row without an image)."""
        shape = (3, self.image_prep.crop, self.image_prep.crop)
        return np.stack([self.image_prep(im) if im is not None else np.zeros(shape, np.float32) for im in images])

    def decode(self, ids, **kw) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, **kw)


def load_tokenizer(path: str):
    """The transformers tokenizer saved in `path`.  A plain fast tokenizer (tokenizer.json and the generic class,
    as the shapes world saves it) loads through PreTrainedTokenizerFast: importing AutoTokenizer costs a CLI about
    three seconds more.  Anything else goes through AutoTokenizer."""
    cfg = _read(os.path.join(path, "tokenizer_config.json"), missing_ok=True)
    if cfg.get("tokenizer_class") in GENERIC_FAST and os.path.exists(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


GENERIC_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")  # the class name transformers 4 and 5 write


def _read(path: str, missing_ok: bool = False) -> dict:
    if not os.path.exists(path):
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path}: missing")
    with open(path) as fh:
        return json.load(fh)


def _write(path: str, obj: dict) -> None:
    write_json(path, obj)
