"""LlavaProcessor: pixels equal transformers' CLIPImageProcessor, input_ids equal transformers' LlavaProcessor."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxlava.data.processor import ImagePrep, LlavaProcessor, expand_to_square
from tok_fixtures import load

SIZES = [(32, 32), (50, 20), (17, 61), (300, 200), (31, 33), (8, 8)]


def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _clip(size, crop, mean=None, std=None):
    from transformers import CLIPImageProcessor
    kw = {} if mean is None else {"image_mean": list(mean), "image_std": list(std)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop}, **kw)


@pytest.mark.parametrize("size,crop", [(32, 32), (24, 20), (40, 48)])
def test_pixels_match_clip_image_processor(size, crop):
    ref = _clip(size, crop)
    prep = ImagePrep(size, crop, pad_to_square=False)
    for k, (w, h) in enumerate(SIZES):
        im = _img(w, h, k)
        want = ref(images=[im], return_tensors="np")["pixel_values"][0]
        got = prep(im)
        assert got.shape == want.shape == (3, crop, crop) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"image {w}x{h}")


def _llava_expand2square(img, background_color):
    """LLaVA's `expand2square` (llava/mm_utils.py), written out here as the reference: a new RGB square of the longer
    side filled with the background colour, the image pasted centred."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background_color)
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def test_pad_to_square_then_clip():
    mean, std = (0.5, 0.25, 0.75), (0.2, 0.3, 0.4)
    ref = _clip(32, 32, mean, std)
    prep = ImagePrep(32, 32, mean=mean, std=std, pad_to_square=True)
    background = tuple(int(x * 255) for x in mean)  # LLaVA: tuple(int(x*255) for x in image_processor.image_mean)
    assert background == prep.fill == (127, 63, 191)
    for k, (w, h) in enumerate(SIZES + [(21, 40), (40, 21)]):  # odd pads: the extra pixel goes after the image
        im = _img(w, h, k)
        sq = _llava_expand2square(im, background)
        assert sq.size == (max(w, h),) * 2
        np.testing.assert_array_equal(np.asarray(expand_to_square(im, prep.fill)), np.asarray(sq))
        want = ref(images=[sq], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(prep(im), want, atol=1e-5, rtol=0, err_msg=f"image {w}x{h}")
    # a top-left paste would differ from the reference
    im = _img(50, 20)
    top_left = Image.new("RGB", (50, 50), background)
    top_left.paste(im, (0, 0))
    want = ref(images=[top_left], return_tensors="np")["pixel_values"][0]
    assert np.abs(prep(im) - want).max() > 0.1


def test_image_sources_and_errors(tmp_path):
    prep = ImagePrep(16, pad_to_square=False)
    im = _img(20, 16).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    a = prep(im)
    np.testing.assert_array_equal(a, prep(buf.getvalue()))
    np.testing.assert_array_equal(a, prep(str(tmp_path / "x.png")))
    np.testing.assert_array_equal(a, prep(np.asarray(im)))
    with pytest.raises(ValueError, match="cannot decode image"):
        prep(b"not an image")


def _hf_llava_processor(tok, size, patch, strategy):
    from transformers import LlavaProcessor as HFLlavaProcessor
    return HFLlavaProcessor(image_processor=_clip(size, size), tokenizer=tok, patch_size=patch,
                            vision_feature_select_strategy=strategy, image_token="<image>",
                            num_additional_image_tokens=1)


@pytest.mark.parametrize("kind", ["sp", "bpe"])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_input_ids_match_transformers_llava_processor(kind, strategy, tmp_path):
    tok = load(kind)
    hf = _hf_llava_processor(tok, 32, 8, strategy)
    hf.save_pretrained(str(tmp_path))
    ours = LlavaProcessor.from_pretrained(str(tmp_path), pad_to_square=False)
    assert ours.num_image_tokens == 16 + (strategy == "full")
    texts = ["USER: <image>\nWhat is shown here? ASSISTANT:", "A chat. USER: Describe <image> briefly. ASSISTANT:"]
    ims = [_img(40, 30, 1), _img(30, 50, 2)]
    want = hf(text=texts, images=ims, return_tensors="np", padding=True)
    got = ours(texts, ims)
    for b in range(2):
        n = int(want["attention_mask"][b].sum())
        np.testing.assert_array_equal(got["input_ids"][b, :n], want["input_ids"][b][want["attention_mask"][b] == 1])
        assert int(got["attention_mask"][b].sum()) == n
    np.testing.assert_allclose(got["pixel_values"], want["pixel_values"], atol=1e-5, rtol=0)
    assert (got["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum(1).tolist() == [ours.num_image_tokens] * 2


def test_padding_sides_and_roundtrip(tmp_path):
    tok = load("bpe")
    p = LlavaProcessor(tok, ImagePrep(16, pad_to_square=True), num_image_tokens=4)
    texts = ["<image>\nhi", "<image>\na much longer question about it"]
    r = p(texts, [_img(10, 20), None])
    lft = p(texts, [_img(10, 20), None], padding_side="left")
    assert r["input_ids"].shape == lft["input_ids"].shape and r["pixel_values"].shape == (2, 3, 16, 16)
    assert not r["pixel_values"][1].any()  # no image -> zero slot
    n = int(r["attention_mask"][0].sum())
    assert r["attention_mask"][0, :n].all() and lft["attention_mask"][0, -n:].all()
    np.testing.assert_array_equal(r["input_ids"][0, :n], lft["input_ids"][0, -n:])
    assert (r["input_ids"][0] == p.image_token_id).sum() == 4
    with pytest.raises(ValueError, match="2 texts but 1 images"):
        p(texts, [None])
    p.save_pretrained(str(tmp_path))
    q = LlavaProcessor.from_pretrained(str(tmp_path))
    assert (q.num_image_tokens, q.image_token_id, q.image_prep.pad_to_square) == (4, p.image_token_id, True)
    np.testing.assert_array_equal(q(texts)["input_ids"], p(texts)["input_ids"])
    q2 = LlavaProcessor.from_pretrained(str(tmp_path), pad_to_square=False)
    assert not q2.image_prep.pad_to_square


def test_original_llava_vocab_without_image_token(tmp_path):
    """No `<image>` in the vocabulary: chunks are tokenized apart and the placeholder id comes from the model."""
    tok = load("sp_noimage")
    p = LlavaProcessor(tok, ImagePrep(16), num_image_tokens=3, image_token_id=len(tok))
    ids = p("USER: <image>\nWhat? ASSISTANT:")["input_ids"][0]
    first = tok("USER: ")["input_ids"]
    rest = tok("\nWhat? ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == first + [len(tok)] * 3 + rest
    p.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="no <image> token"):
        LlavaProcessor.from_pretrained(str(tmp_path))
    q = LlavaProcessor.from_pretrained(str(tmp_path), image_token_id=len(tok))
    assert q.num_image_tokens == 3 and q("USER: <image>\nWhat? ASSISTANT:")["input_ids"][0].tolist() == ids.tolist()
