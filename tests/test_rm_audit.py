"""The on-policy reward-model audit: its pair rule against a brute-force count, and (slow) the command on a small
stack, whose samples it judges as the shapes judges do."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxlava.eval.shapes import judge, parse_mentions
from jaxlava.training.rm_audit import (LAPSES, best_of, lapse_counts, object_prices, pair_accuracy,
                                      within_prompt_share)


def test_pair_rule_on_hand_made_groups():
    # (score, hallucinated, recalled)
    groups = [[(2.0, 0, 2), (1.0, 1, 2), (0.5, 0, 1)],  # h-pairs: (a,b) right, (b,c) wrong; r-pair (a,c) right
              [(1.0, 0, 1), (1.0, 2, 1)],  # an h-pair with tied scores: one half
              [(3.0, 1, 1)]]  # a single sample makes no pair
    acc = pair_accuracy(groups)
    assert acc["hallucination"]["pairs"] == 3 and acc["hallucination"]["accuracy"] == pytest.approx(1.5 / 3)
    assert acc["recall"]["pairs"] == 1 and acc["recall"]["accuracy"] == 1.0
    # dominant: (a,b) (a names as many present objects) and the tie; (b,c) is not (b names more present ones)
    assert acc["dominant"]["pairs"] == 2 and acc["dominant"]["accuracy"] == pytest.approx(1.5 / 2)
    assert acc["hallucination"]["se"] == pytest.approx(np.sqrt(0.25 / 3))
    assert pair_accuracy([[(1.0, 0, 1), (2.0, 0, 1)]])["hallucination"] == {"pairs": 0, "accuracy": None,
                                                                            "se": None}


def test_best_of_counts_the_top_scored_sample_against_the_mean():
    # (score, hallucinated, recalled)
    groups = [[(2.0, 0, 3), (1.0, 2, 1), (0.0, 1, 2), (5.0, 4, 0)],  # of 3: the first; of 4: the last
              [(1.0, 1, 1), (1.0, 3, 1), (0.0, 0, 0)]]  # a tie at the top: both count half
    b3 = best_of(groups, 3)
    # chosen: (0, 3) + (2, 1); mean of the first three: (1, 2) + (4 / 3, 2 / 3)
    assert b3 == {"k": 3, "hallucinated": pytest.approx(2 / (7 / 3)), "recalled": pytest.approx(4 / (8 / 3))}
    b4 = best_of(groups, 4)  # the second prompt has 3 samples: all of them
    assert b4["hallucinated"] == pytest.approx((4 + 2) / (7 / 4 + 4 / 3))
    assert b4["recalled"] == pytest.approx((0 + 1) / (6 / 4 + 2 / 3))
    flipped = best_of([[(-s, h, r) for s, h, r in g] for g in groups], 3)  # the lowest-scored instead
    assert flipped["hallucinated"] == pytest.approx((1 + 0) / (7 / 3))
    assert best_of([[(1.0, 0, 1), (2.0, 0, 2)]], 2) is None  # nothing hallucinated: no ratio


def test_within_prompt_share_is_the_one_way_decomposition():
    rng = np.random.default_rng(3)
    scores = [list(rng.normal(m, 0.5, size=8)) for m in rng.normal(0, 2, size=12)]
    flat = np.array(scores)
    between = np.var(np.repeat(flat.mean(1), 8))  # prompt means, one per sample
    assert within_prompt_share(scores) == pytest.approx(1 - between / np.var(flat))
    assert within_prompt_share([[1.0, 2.0], [11.0, 12.0]]) == pytest.approx(0.25 / 25.25)
    assert within_prompt_share([[1.0, 1.0], [1.0]]) is None


def test_object_prices_recover_the_rates_under_per_prompt_offsets():
    rng = np.random.default_rng(5)
    groups = []
    for offset in rng.normal(0, 10, size=20):  # each prompt its own level, which the prices must ignore
        h, r = rng.integers(0, 3, size=8), rng.integers(0, 4, size=8)
        groups.append([(offset - 1.5 * hi + 0.4 * ri, hi, ri) for hi, ri in zip(h, r)])
    p = object_prices(groups)
    assert p["absent"] == pytest.approx(-1.5) and p["present"] == pytest.approx(0.4) and p["r2"] == pytest.approx(1)
    noisy = [[(s + n, h, r) for (s, h, r), n in zip(g, rng.normal(0, 1, size=8))] for g in groups]
    q = object_prices(noisy)
    assert abs(q["absent"] + 1.5) < 0.3 and abs(q["present"] - 0.4) < 0.3 and 0 < q["r2"] < 1
    assert object_prices([[(1.0, 0, 1), (2.0, 1, 2)], [(0.0, 0, 0), (5.0, 1, 1)]]) is None  # counts move together


def test_lapse_prices_recover_four_rates_and_refuse_counts_that_move_together():
    rng = np.random.default_rng(7)
    rates = np.array([-1.2, -0.6, 0.3, -0.4])
    groups = []
    for offset in rng.normal(0, 5, size=30):
        counts = rng.integers(0, 3, size=(8, 4))
        groups.append([(offset + float(c @ rates), *map(int, c)) for c in counts])
    p = object_prices(groups, LAPSES)
    assert [p[n] for n in LAPSES] == pytest.approx(list(rates)) and p["r2"] == pytest.approx(1)
    tied = [[(s, a, b, c, a) for s, a, b, c, _ in g] for g in groups]  # repeats always equal partners
    assert object_prices(tied, LAPSES) is None


def test_lapse_counts_split_the_planted_partner_from_other_absent_objects():
    partners = {"red circle": "blue square", "blue square": "red circle", "green star": "yellow star",
                "yellow star": "green star"}
    j = judge(parse_mentions("The image shows a red circle, a blue square, a green star and a red circle again. "
                             "There is a red circle at the top."),
              ["red circle", "yellow diamond"])
    # blue square: the absent partner of the present red circle; green star: absent, but its partner is absent too
    assert set(j.hallucinated) == {"blue square", "green star"} and "red circle" in j.repeated
    assert lapse_counts(j, partners) == (1, 1, 1, len(j.repeated))
    assert lapse_counts(j, {}) == (0, 2, 1, len(j.repeated))


def test_pair_rule_matches_brute_force_and_flips_with_the_scores():
    rng = np.random.default_rng(0)
    groups = [[(float(rng.normal()), int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(6)]
              for _ in range(20)]
    right = {"hallucination": 0.0, "dominant": 0.0, "recall": 0.0}
    count = {"hallucination": 0, "dominant": 0, "recall": 0}
    for g in groups:
        for a, b in itertools.permutations(g, 2):  # each unordered pair twice: count the winner's side once
            kind = "hallucination" if a[1] != b[1] else "recall" if a[2] != b[2] else None
            better = a[1] < b[1] if kind == "hallucination" else a[2] > b[2]
            kinds = [kind] + (["dominant"] if kind == "hallucination" and a[2] >= b[2] else [])
            if kind and better:
                for k in kinds:
                    count[k] += 1
                    right[k] += a[0] > b[0]
    acc = pair_accuracy(groups)
    for kind in right:
        assert acc[kind]["pairs"] == count[kind]
        assert acc[kind]["accuracy"] == pytest.approx(right[kind] / count[kind])
    negated = pair_accuracy([[(-s, h, r) for s, h, r in g] for g in groups])
    for kind in right:
        assert negated[kind]["accuracy"] == pytest.approx(1 - acc[kind]["accuracy"])
