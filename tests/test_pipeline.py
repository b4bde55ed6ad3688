"""Storage round trip and Grain pipelines: batch formats (docs/design.md), determinism, sharding, exact resume
from saved iterator state (workers 0 and 1), orbax/grain checkpointing."""
import io

import numpy as np
import pytest
from PIL import Image

from jaxlava.data import pipeline as P
from jaxlava.data import storage, templates
from jaxlava.data.processor import ImagePrep, LlavaProcessor
from jaxlava.data.templates import IGNORE_INDEX, encode_conversation
from tok_fixtures import load

N = 12
BUCKETS = (64, 128, 256)


def _png(seed):
    arr = np.random.default_rng(seed).integers(0, 255, (12 + seed % 5, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _conv(i):
    return [{"from": "human", "value": f"<image>\nWhat is number {i}?"}, {"from": "gpt", "value": f"It is {i}." * (1 + i % 3)}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ds"))
    conv = [{"id": f"c{i}", "image": _png(i) if i % 4 else b"", "conversations": _conv(i), "source": "t"}
            for i in range(N)]
    pref = [{"id": f"p{i}", "image": _png(i), "conversations": _conv(i), "output_1": f"Yes {i}.",
             "output_2": "No." * (i + 1), "preference": 1 + i % 2, "hallucination": bool(i % 3), "facts": [f"f{i}", "g"]}
            for i in range(N)]
    ppo = [{"id": f"q{i}", "image": _png(i), "conversations": _conv(i)[:1], "caption_type": 1 + i % 7,
            "length_bonus": -0.5 * i, "facts": [f"fact {i}"]} for i in range(N)]
    probe = [{"id": f"r{i}", "image": _png(i), "question": f"Is there a {i}?", "answer": "yes", "benchmark": "pope",
              "split": "adversarial", "facts": [], "extra": {"k": i}} for i in range(5)]
    for kind, recs in [("conversation", conv), ("preference", pref), ("ppo_prompt", ppo), ("probe", probe)]:
        assert storage.write_records(kind, recs, d) == len(recs)
    return d, conv


@pytest.fixture(scope="module")
def proc():
    return LlavaProcessor(load("bpe"), ImagePrep(16, pad_to_square=True), num_image_tokens=4)


def test_storage_roundtrip_and_errors(data, tmp_path):
    d, conv = data
    src = storage.open_source(d, "conversation")
    assert len(src) == N and src[3] == conv[3] and src[4]["image"] == b""
    probe = storage.open_source(d, "probe")[2]
    assert probe["extra"] == {"k": 2} and probe["facts"] == []
    import pickle
    assert pickle.loads(pickle.dumps(src))[5] == conv[5]
    with pytest.raises(storage.StorageError, match="missing field 'conversations'"):
        storage.write_records("conversation", [{"id": "x", "image": b""}], str(tmp_path))
    with pytest.raises(storage.StorageError, match="unknown record kind"):
        storage.write_records("bogus", [], str(tmp_path))
    with pytest.raises(storage.StorageError, match="no preference/test dataset"):
        storage.open_source(d, "preference", split="test")


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def test_sft_batches_format(data, proc):
    d, conv = data
    src = storage.open_source(d, "conversation")
    b = next(P.sft_batches(src, proc, batch_size=4, buckets=BUCKETS, shuffle=False, shard_index=0, shard_count=1))
    longest = max(len(encode_conversation(proc.tokenizer, c["conversations"], image_token_id=proc.image_token_id,
                                          num_image_tokens=4)["input_ids"]) for c in conv[:4])
    T = P.bucket_length(longest, BUCKETS)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (4, T)
    assert b["input_ids"].dtype == b["labels"].dtype == b["attention_mask"].dtype == np.int32
    assert b["pixel_values"].shape == (4, 3, 16, 16) and b["pixel_values"].dtype == np.float32
    assert not b["pixel_values"][0].any() and b["pixel_values"][1].any()  # record 0 has no image
    for r in range(4):
        enc = encode_conversation(proc.tokenizer, conv[r]["conversations"], image_token_id=proc.image_token_id,
                                  num_image_tokens=4)
        n = len(enc["input_ids"])
        np.testing.assert_array_equal(b["input_ids"][r, :n], enc["input_ids"])
        np.testing.assert_array_equal(b["labels"][r, :n], enc["labels"])
        assert (b["labels"][r, n:] == IGNORE_INDEX).all() and b["attention_mask"][r].sum() == n
        assert (b["input_ids"][r] == proc.image_token_id).sum() == 4


def test_determinism_sharding_epochs(data, proc):
    d, _ = data
    src = storage.open_source(d, "ppo_prompt")
    kw = dict(batch_size=3, buckets=BUCKETS, shard_index=0, shard_count=1)
    ids = lambda it, n: [x for b in _take(it, n) for x in b["id"]]  # noqa: E731
    a = ids(P.ppo_prompt_batches(src, proc, seed=1, **kw), 8)
    assert a == ids(P.ppo_prompt_batches(src, proc, seed=1, **kw), 8)
    assert a != ids(P.ppo_prompt_batches(src, proc, seed=2, **kw), 8)
    assert sorted(a[:N]) == sorted(a[N:]) == sorted(f"q{i}" for i in range(N)) and a[:N] != a[N:]  # reshuffled epoch
    kw.pop("shard_index"), kw.pop("shard_count")
    s0 = ids(P.ppo_prompt_batches(src, proc, seed=1, num_epochs=1, shard_index=0, shard_count=2, **kw), 2)
    s1 = ids(P.ppo_prompt_batches(src, proc, seed=1, num_epochs=1, shard_index=1, shard_count=2, **kw), 2)
    assert sorted(s0 + s1) == sorted(f"q{i}" for i in range(N))
    it = P.ppo_prompt_batches(src, proc, seed=0, num_epochs=1, shard_index=0, shard_count=1, **kw)
    assert len(list(it)) == N // 3  # one pass, drop_remainder


def test_preference_and_ppo_formats(data, proc):
    d, _ = data
    b = next(P.preference_batches(storage.open_source(d, "preference"), proc, batch_size=4, buckets=BUCKETS,
                                  shuffle=False, shard_index=0, shard_count=1))
    B, _, T = b["input_ids"].shape
    assert b["input_ids"].shape == b["attention_mask"].shape == (4, 2, T) and T in BUCKETS
    assert b["choice"].tolist() == [0, 1, 0, 1] and b["choice"].dtype == np.int32
    assert (b["attention_mask"][..., -1] == 1).all()  # left padded: every row ends with a real token
    assert b["pixel_values"].shape == (4, 3, 16, 16)
    tail = proc.tokenizer.decode(b["input_ids"][0, 0][-8:])
    assert tail.endswith("response is")
    first = next(P.preference_batches(storage.open_source(d, "preference"), proc, batch_size=4, buckets=BUCKETS,
                                      shuffle=False, shard_index=0, shard_count=1, facts_first=True))
    tails = [proc.tokenizer.decode(x["input_ids"][0, 0][x["attention_mask"][0, 0] == 1]).replace(" ", "")
             for x in (b, first)]
    header = templates.FACTS_HEADER.replace(" ", "").strip()
    assert header in tails[0] and header not in tails[1]  # facts_first: the reward prompt carries no facts
    assert tails[1].endswith("response is".replace(" ", ""))
    p = next(P.ppo_prompt_batches(storage.open_source(d, "ppo_prompt"), proc, batch_size=4, buckets=BUCKETS,
                                  shuffle=False, shard_index=0, shard_count=1))
    assert p["input_ids"].shape[0] == 4 and (p["attention_mask"][:, -1] == 1).all()
    assert p["caption_type"].tolist() == [1, 2, 3, 4] and p["caption_type"].dtype == np.int32
    np.testing.assert_allclose(p["length_bonus"], [0, -0.5, -1.0, -1.5])
    assert p["facts"][1] == ["fact 1"] and p["id"] == ["q0", "q1", "q2", "q3"]
    assert proc.tokenizer.decode(p["input_ids"][0]).replace(" ", "").endswith("ASSISTANT:")
    short = P.ppo_prompt_batches(storage.open_source(d, "ppo_prompt"), proc, batch_size=1, buckets=BUCKETS,
                                 max_prompt_len=5, num_epochs=1, shard_index=0, shard_count=1)
    assert list(short) == []  # every query is longer than 5 tokens: dropped, not cut


def test_other_facts_view(data):
    src = storage.open_source(data[0], "preference")
    view = P.OtherFacts(src, shift=3)
    assert len(view) == len(src) == N
    for i in range(N):
        got, own = view[i], src[i]
        assert got["facts"] == src[(i + 3) % N]["facts"] != own["facts"]
        assert {k: v for k, v in got.items() if k != "facts"} == {k: v for k, v in own.items() if k != "facts"}
    with pytest.raises(ValueError, match="needs 2 or more"):
        P.OtherFacts([src[0]])


def test_probe_batches(data, proc):
    d, _ = data
    bs = list(P.probe_batches(storage.open_source(d, "probe"), proc, batch_size=2, buckets=BUCKETS))
    assert [len(b["id"]) for b in bs] == [2, 2, 1]
    assert bs[0]["records"][1]["question"] == "Is there a 1?" and bs[2]["id"] == ["r4"]
    assert (bs[0]["input_ids"] == proc.image_token_id).sum(1).tolist() == [4, 4]


@pytest.mark.parametrize("workers", [0, 1])  # workers=1 takes ~5 s (worker start-up)
def test_exact_resume(data, proc, workers):
    """An ArrayRecord-backed iterator restored from a saved state yields the identical next batches."""
    d, _ = data
    src = storage.open_source(d, "preference")
    make = lambda: P.preference_batches(src, proc, batch_size=2, buckets=BUCKETS, seed=3, num_workers=workers,  # noqa
                                        shard_index=0, shard_count=1)
    it = make()
    _take(it, 5)  # crosses an epoch boundary (6 batches per epoch)
    state = it.get_state()
    want = _take(it, 3)
    it2 = make()
    it2.set_state(state)
    for a, b in zip(want, _take(it2, 3)):
        _eq(a, b)


def test_orbax_grain_checkpoint(data, proc, tmp_path):
    import grain
    import orbax.checkpoint as ocp
    d, _ = data
    src = storage.open_source(d, "conversation")
    make = lambda: P.sft_batches(src, proc, batch_size=2, buckets=BUCKETS, seed=5, shard_index=0, shard_count=1)  # noqa
    it = make()
    _take(it, 4)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), options=ocp.CheckpointManagerOptions(create=True),
                                 item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 2)
    it2 = make()
    mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    for a, b in zip(want, _take(it2, 2)):
        _eq(a, b)
