"""On-policy preference pairs (jaxlava/training/rm_pairs.py): the annotators' rule against a brute-force reading
of it, the records it writes, and the concatenated source the reward model reads them through."""
import itertools
import random

import pytest

from jaxlava.data import storage
from jaxlava.training.rm_pairs import judged_pairs, length_balanced, pair_records, recall_copied


def _brute(counts, texts, tradeoff):
    """Every ordered pair (i, j), i preferred: fewer absent objects, or as many and more present ones."""
    out = set()
    for i, j in itertools.permutations(range(len(counts)), 2):
        (hi, ri), (hj, rj) = counts[i], counts[j]
        if texts[i] == texts[j]:
            continue
        if hi < hj and not (tradeoff == "skip" and ri < rj):
            out.add((i, j, "hallucination"))
        elif hi == hj and ri > rj:
            out.add((i, j, "recall"))
    return out


@pytest.mark.parametrize("tradeoff", ["fewer_absent", "skip"])
def test_pairs_follow_the_annotators_rule(tradeoff):
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        counts = [(rng.randint(0, 2), rng.randint(0, 3)) for _ in range(n)]
        texts = [rng.choice("abcdef") for _ in range(n)]
        got = judged_pairs(counts, texts, tradeoff)
        assert len(got) == len(set(got)) and set(got) == _brute(counts, texts, tradeoff)


def test_repeats_decide_only_the_ties():
    """With `repeats`, the pairs are the annotators' rule's plus, among samples that tie on both counts, the one
    that names fewer categories twice over the other (brute force); without it, the rule's alone."""
    rng = random.Random(1)
    made = 0
    for _ in range(200):
        n = rng.randint(1, 8)
        counts = [(rng.randint(0, 1), rng.randint(0, 2)) for _ in range(n)]
        texts, reps = [rng.choice("abcdefgh") for _ in range(n)], [rng.randint(0, 2) for _ in range(n)]
        want = _brute(counts, texts, "skip") | {
            (i, j, "repeat") for i, j in itertools.permutations(range(n), 2)
            if texts[i] != texts[j] and counts[i] == counts[j] and reps[i] < reps[j]}
        got = judged_pairs(counts, texts, "skip", reps)
        assert len(got) == len(set(got)) and set(got) == want
        assert set(judged_pairs(counts, texts, "skip")) == _brute(counts, texts, "skip")
        made += sum(k == "repeat" for *_, k in got)
    assert made > 50
    # the hand-made case: 0 and 1 tie on (absent, present); 1 names a category twice; 2 has an absent object
    assert set(judged_pairs([(0, 2), (0, 2), (1, 2)], ["a", "b", "c"], repeats=[0, 1, 0])) == {
        (0, 1, "repeat"), (0, 2, "hallucination"), (1, 2, "hallucination")}


def test_pairs_on_hand_made_counts():
    # (absent, present): 0 beats 1 and 2 on absent objects; 1 and 3 tie on absent, 3 names more present ones;
    # 0 names fewer present objects than 3 but fewer absent ones: kept by the paper's rule, left out by "skip"
    counts, texts = [(0, 1), (1, 1), (2, 3), (1, 2)], ["a", "b", "c", "d"]
    assert set(judged_pairs(counts, texts)) == {(0, 1, "hallucination"), (0, 2, "hallucination"),
                                                (1, 2, "hallucination"), (3, 2, "hallucination"),
                                                (0, 3, "hallucination"), (3, 1, "recall")}
    assert (0, 3, "hallucination") not in judged_pairs(counts, texts, "skip")
    assert (0, 2, "hallucination") not in judged_pairs(counts, texts, "skip")
    assert judged_pairs([(0, 1), (1, 1)], ["same", "same"]) == []  # one text twice is no pair
    with pytest.raises(ValueError, match="tradeoff"):
        judged_pairs(counts, texts, "longest")


def _rec(win: str, lose: str, first: bool) -> dict:
    return {"output_1": win if first else lose, "output_2": lose if first else win, "preference": 1 if first else 2}


def test_length_balance_keeps_as_many_longer_as_shorter_winners():
    """Hand-made: 5 pairs the shorter response wins, 2 the longer, 1 of equal length; balanced, 2 of the 5 stay
    (a seeded choice), with the 2, the tie and the order kept; already balanced input is returned whole."""
    short = [(_rec(f"a{i} b", f"a{i} b c", i % 2 == 0), "hallucination") for i in range(5)]
    long_ = [(_rec("a b c d", "a", True), "recall"), (_rec("x y", "x", False), "recall")]
    tie = [(_rec("p q", "r s", True), "repeat")]
    kinded = short[:3] + long_[:1] + tie + short[3:] + long_[1:]
    got = length_balanced(kinded, seed=7)
    assert len(got) == 5 and [k for k in kinded if k in got] == got  # a subsequence, order kept
    assert all(k in got for k in long_ + tie) and sum(k in got for k in short) == 2
    assert length_balanced(kinded, seed=7) == got
    assert any(length_balanced(kinded, seed=s) != got for s in range(20))  # the choice is random
    assert length_balanced(long_ + tie + short[:2], seed=0) == long_ + tie + short[:2]
    # the other way round: more pairs that the longer response wins
    assert sum(k in length_balanced(long_ + short[:1], seed=0) for k in long_) == 1


def test_recall_copies_repeat_only_recall_pairs_each_with_its_own_order():
    """Hand-made: 2 recall pairs among others; 2 extra copies write each recall pair 3 times with ids -c1, -c2 and the
    same winner and loser, on a side drawn per copy; the other pairs stay once and the order is kept."""
    recs = [(dict(_rec(f"w{i}", f"l{i}", i % 2 == 0), id=f"p{i}"), kind)
            for i, kind in enumerate(["hallucination", "recall", "repeat", "recall"])]
    got = recall_copied(recs, 2, seed=0)
    assert [r["id"] for r, _ in got] == ["p0", "p1", "p1-c1", "p1-c2", "p2", "p3", "p3-c1", "p3-c2"]
    for rec, kind in got:
        i = int(rec["id"][1])
        chosen, other = (rec["output_1"], rec["output_2"])[::1 if rec["preference"] == 1 else -1]
        assert (chosen, other, kind) == (f"w{i}", f"l{i}", recs[i][1])
    sides = [r["preference"] for s in range(10) for r, k in recall_copied(recs, 2, seed=s) if "-c" in r["id"]]
    assert set(sides) == {1, 2}  # each copy's side is a coin flip
    assert recall_copied(recs, 0, seed=0) == recs
    with pytest.raises(ValueError, match="at least 0"):
        recall_copied(recs, -1, seed=0)


class _J:  # the fields of a shapes Judgement that the pairs read
    def __init__(self, absent, present, repeated=()):
        self.hallucinated, self.recalled, self.repeated = tuple(absent), tuple(present), tuple(repeated)


def test_records_prefer_the_winner_on_either_side_and_fit_the_schema(tmp_path):
    prompt = {"id": "p0", "image": b"\x89PNG", "facts": ["There is 1 object: a small red circle."],
              "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                {"from": "gpt", "value": "A red circle."}]}
    texts = [f"response {i}" for i in range(8)]
    judged = [_J(["blue square"] * (i % 3), ["red circle"] * (i % 2)) for i in range(8)]
    recs = pair_records([{"id": "p0", "texts": texts, "judged": judged}], {"p0": prompt}, seed=3)
    want = judged_pairs([(i % 3, i % 2) for i in range(8)], texts)
    assert len(recs) == len(want) > 0
    for rec, (win, lose, kind) in zip(recs, want):
        chosen = rec["output_1"] if rec["preference"] == 1 else rec["output_2"]
        other = rec["output_2"] if rec["preference"] == 1 else rec["output_1"]
        assert (chosen, other) == (texts[win], texts[lose])
        assert rec["hallucination"] == (kind == "hallucination")
        assert rec["image"] == prompt["image"] and rec["facts"] == prompt["facts"]
        assert rec["conversations"] == [prompt["conversations"][0], {"from": "gpt", "value": texts[win]}]
        storage.encode("preference", rec, rec["id"])
    assert {r["preference"] for r in recs} == {1, 2}  # the winner's side is a coin flip
    assert len({r["id"] for r in recs}) == len(recs)
    assert pair_records([{"id": "p0", "texts": texts, "judged": judged}], {"p0": prompt}, seed=3) == recs
    # with repeats: the two responses that tie, one naming its circle twice, make one more pair, a non-hallucination
    # one that the response without the repeat wins
    judged[0] = _J([], [], ["red circle"])
    more = pair_records([{"id": "p0", "texts": texts, "judged": judged}], {"p0": prompt}, seed=3, repeats=True)
    extra = [r for r in more if r["id"] == "p0-s6-s0"]
    assert len(more) == len(recs) + 1 and len(extra) == 1 and not extra[0]["hallucination"]
    assert extra[0]["conversations"][1]["value"] == texts[6]


def test_concatenated_sources_read_in_order(tmp_path):
    def rec(i):
        return {"id": f"r{i}", "image": b"", "conversations": [], "output_1": "a", "output_2": "b",
                "preference": 1, "hallucination": False}
    storage.write_records("preference", [rec(i) for i in range(3)], str(tmp_path / "a"))
    storage.write_records("preference", [rec(i) for i in range(3, 5)], str(tmp_path / "b"))
    one = storage.open_sources([str(tmp_path / "a")], "preference")
    assert isinstance(one, storage.RecordSource) and len(one) == 3
    both = storage.open_sources([str(tmp_path / "a"), str(tmp_path / "b")], "preference")
    assert len(both) == 5 and [both[i]["id"] for i in range(5)] == [f"r{i}" for i in range(5)]
    with pytest.raises(IndexError):
        both[5]
    head = storage.HeadSource(both, 4)
    assert len(head) == 4 and head[3]["id"] == "r3" and len(storage.HeadSource(both, 99)) == 5
    with pytest.raises(IndexError):
        head[4]
    import pickle
    assert pickle.loads(pickle.dumps(both))[4]["id"] == "r4"  # grain workers receive it pickled
    with pytest.raises(storage.StorageError, match="no preference/train dataset"):
        storage.open_sources([str(tmp_path / "a"), str(tmp_path / "missing")], "preference")
