"""PPO math (jaxlava/ppo.py) against plain for-loop references written here, for numpy float64 input
(exact to 1e-10, float64 out) and for jax float32 input under jax.jit."""
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlava import ppo
from jaxlava.ppo import AnswerType

SHAPES = [(1, 1), (2, 7), (3, 24)]


# ---------------------------------------------------------------- loop references

def ref_mean(x, mask=None):
    num = den = 0.0
    for b in range(len(x)):
        for t in range(len(x[b])):
            w = 1.0 if mask is None else float(mask[b][t])
            num += w * float(x[b][t])
            den += w
    return num / den if den else 0.0


def ref_var(x, mask=None):
    mu = ref_mean(x, mask)
    return ref_mean([[(v - mu) ** 2 for v in row] for row in x], mask)


def ref_gae(r, v, gamma, lam):
    B, T = len(r), len(r[0])
    adv = np.zeros((B, T))
    for b in range(B):
        delta = [r[b][t] + gamma * (v[b][t + 1] if t + 1 < T else 0.0) - v[b][t] for t in range(T)]
        for t in range(T):
            adv[b, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(T - t))
    return adv, adv + np.asarray(v)


def ref_whiten(x, mask=None):
    mu, sd = ref_mean(x, mask), math.sqrt(ref_var(x, mask))
    out = np.zeros((len(x), len(x[0])))
    for b in range(len(x)):
        for t in range(len(x[0])):
            if mask is None or mask[b][t]:
                out[b, t] = (x[b][t] - mu) / (sd + 1e-8)
    return out


def ref_token_rewards(score, lp, ref, n, stop, lb, corr, kl_coef=0.1, stop_penalty=-8.0, length_score=-10.0,
                      correct_score=2.0, scale=10.0, terminal_at_eos=False):
    B, T = len(lp), len(lp[0])
    out = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            out[b, t] = -kl_coef * max(lp[b][t] - ref[b][t], 0.0)
        R = score[b] + (0.0 if stop[b] else stop_penalty) + n[b] / T * lb[b] * length_score + corr[b] * correct_score
        out[b, max(n[b] - 1, 0) if terminal_at_eos else T - 1] += R
    return out * scale


def ref_policy_loss(lp, old, adv, mask=None, clip=0.2):
    per = [[0.0] * len(lp[0]) for _ in lp]
    for b in range(len(lp)):
        for t in range(len(lp[0])):
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - clip), 1 + clip)
            per[b][t] = max(-adv[b][t] * ratio, -adv[b][t] * clipped)
    return ref_mean(per, mask)


def ref_value_loss(v, old, ret, mask=None, clip=0.2):
    per = [[0.0] * len(v[0]) for _ in v]
    for b in range(len(v)):
        for t in range(len(v[0])):
            vc = min(max(v[b][t], old[b][t] - clip), old[b][t] + clip)
            per[b][t] = max((v[b][t] - ret[b][t]) ** 2, (vc - ret[b][t]) ** 2)
    return 0.5 * ref_mean(per, mask)


def ref_n_clipped(lp, old, clip=0.2):
    return sum(abs(math.exp(a - o) - 1) > clip for ra, ro in zip(lp, old) for a, o in zip(ra, ro))


def ref_clip_fraction(lp, old, clip, mask=None, adv=None):
    hit = [[0.0] * len(lp[0]) for _ in lp]
    for b in range(len(lp)):
        for t in range(len(lp[0])):
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - clip), 1 + clip)
            hit[b][t] = float(abs(ratio - 1) > clip if adv is None else -adv[b][t] * clipped > -adv[b][t] * ratio)
    return ref_mean(hit, mask)


def ref_log_softmax_row(z):
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


def ref_logprobs(logits, tokens, mask, temperature=1.0):
    out = np.zeros(np.shape(tokens))
    for b in range(len(tokens)):
        for t in range(len(tokens[0])):
            if mask[b][t]:
                out[b, t] = ref_log_softmax_row([v / temperature for v in logits[b][t]])[tokens[b][t]]
    return out


def ref_entropy(logits, mask, temperature=1.0):
    out = np.zeros(np.shape(logits)[:2])
    for b in range(len(logits)):
        for t in range(len(logits[0])):
            if mask[b][t]:
                out[b, t] = -sum(math.exp(l) * l for l in ref_log_softmax_row([v / temperature for v in logits[b][t]]))
    return out


def ref_truncate(tokens, eos, pad, qids):
    rows, lengths, stops = [], [], []
    for row in tokens:
        row = list(row)
        end = row.index(eos) if eos in row else None
        for q in qids:
            if q in row:
                end = row.index(q)
        out = row if end is None else row[:end + 1] + [pad] * (len(row) - end - 1)
        rows.append(out)
        lengths.append(sum(tok != pad for tok in out))
        stops.append(eos in out)
    return np.array(rows), np.array(lengths), np.array(stops)


# ---------------------------------------------------------------- harness

def _to_jax(a):
    if a is None:
        return None
    a = np.asarray(a)
    return jnp.asarray(a, jnp.float32 if a.dtype.kind == "f" else None)


def check(fn, args, expected, **kwargs):
    """numpy float64 in -> numpy float64 out at 1e-10; jax float32 in, jitted -> jax out at 1e-4 relative."""
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = fn(*args, **kwargs)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        assert not isinstance(g, jax.Array)
        if np.asarray(e).dtype.kind == "f":
            assert np.asarray(g).dtype == np.float64
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64), atol=1e-10, rtol=0)
    got = jax.jit(partial(fn, **kwargs))(*[_to_jax(a) for a in args])
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, jax.Array)
        atol = 1e-4 * max(1.0, float(np.max(np.abs(e)))) if np.asarray(e).dtype.kind == "f" else 0
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64), atol=atol, rtol=0)


def _mask(rng, B, T):
    m = (rng.random((B, T)) < 0.6).astype(np.float64)
    m[0, 0] = 1.0
    return m


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (0.5, 1.0)])
def test_gae(B, T, gamma, lam):
    rng = np.random.default_rng(B * T)
    r, v = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    check(ppo.gae, (r, v), ref_gae(r.tolist(), v.tolist(), gamma, lam), gamma=gamma, lam=lam)


def test_gae_telescopes_with_unit_discount():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(2, 9)), rng.normal(size=(2, 9))
    adv, ret = ppo.gae(r, v)
    np.testing.assert_allclose(adv, np.cumsum(r[:, ::-1], 1)[:, ::-1] - v, atol=1e-12)
    np.testing.assert_allclose(ret, adv + v, atol=1e-12)


@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_whiten_and_masked_stats(B, T, masked):
    rng = np.random.default_rng(B + T)
    x = rng.normal(3.0, 2.0, size=(B, T))
    mask = _mask(rng, B, T) if masked else None
    check(ppo.whiten, (x, mask), ref_whiten(x.tolist(), None if mask is None else mask.tolist()))
    check(ppo.masked_mean, (x, mask), np.float64(ref_mean(x.tolist(), mask)))
    check(ppo.masked_var, (x, mask), np.float64(ref_var(x.tolist(), mask)))


def test_whiten_zero_mean_unit_std():
    x = np.random.default_rng(1).normal(5.0, 3.0, size=(4, 50))
    w = ppo.whiten(x)
    assert abs(w.mean()) < 1e-12 and abs(w.std() - 1) < 1e-6


@pytest.mark.parametrize("B,T", [(2, 1), (4, 7), (6, 24)])
@pytest.mark.parametrize("terminal_at_eos", [False, True])
def test_token_rewards(B, T, terminal_at_eos):
    rng = np.random.default_rng(B * 100 + T)
    n = rng.integers(0, T + 1, size=B)
    n[0] = T
    stop = np.arange(B) % 2  # both 0 and 1
    lp, ref = rng.normal(-2.0, 1.0, size=(B, T)), rng.normal(-2.0, 1.0, size=(B, T))
    pad = np.arange(T)[None] >= n[:, None]
    lp[pad] = ref[pad] = 0.0
    score = rng.normal(size=B)
    lb = rng.choice([-0.5, 1.0], size=B)
    corr = rng.choice([0.0, 1.0, 0.5, -0.5], size=B)
    args = (score, lp, ref, n, stop, lb, corr)
    expected = ref_token_rewards(score.tolist(), lp.tolist(), ref.tolist(), n.tolist(), stop.tolist(), lb.tolist(),
                                 corr.tolist(), terminal_at_eos=terminal_at_eos)
    check(ppo.token_rewards, args, expected, terminal_at_eos=terminal_at_eos)
    other = {"kl_coef": 0.05, "stop_penalty": -3.0, "length_score": 4.0, "correct_score": 1.5, "scale": 2.0}
    check(ppo.token_rewards, args, ref_token_rewards(score.tolist(), lp.tolist(), ref.tolist(), n.tolist(),
                                                     stop.tolist(), lb.tolist(), corr.tolist(), **other), **other)


@pytest.mark.parametrize("B,group", [(6, 2), (8, 4), (6, 6), (5, 1), (5, 0)])
def test_group_centred(B, group):
    score = np.random.default_rng(B + group).normal(2.0, 3.0, size=B)
    expected = score.copy()
    for g in range(B // max(group, 1)) if group > 1 else []:
        block = score[g * group:(g + 1) * group]
        expected[g * group:(g + 1) * group] = block - sum(block.tolist()) / group
    check(ppo.group_centred, (score,), expected, group=group)


def test_group_centred_refuses_a_ragged_batch():
    with pytest.raises(ValueError, match="7 scores do not split into groups of 2"):
        ppo.group_centred(np.zeros(7), 2)


def test_token_rewards_terminal_slot():
    T = 5
    r = ppo.token_rewards(np.array([1.0]), np.zeros((1, T)), np.zeros((1, T)), np.array([2]), np.array([1]),
                          np.array([0.0]), np.array([0.0]))
    np.testing.assert_allclose(r, [[0, 0, 0, 0, 10.0]])
    r = ppo.token_rewards(np.array([1.0]), np.zeros((1, T)), np.zeros((1, T)), np.array([2]), np.array([0]),
                          np.array([0.0]), np.array([0.0]), terminal_at_eos=True)
    np.testing.assert_allclose(r, [[0, -70.0, 0, 0, 0]])


@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("spread", [0.5, 0.01])  # clip active / inactive
@pytest.mark.parametrize("masked", [False, True])
def test_policy_loss(B, T, spread, masked):
    rng = np.random.default_rng(T + int(spread * 100))
    old = rng.normal(-2.0, 1.0, size=(B, T))
    lp = old + rng.normal(0.0, spread, size=(B, T))
    adv = rng.normal(size=(B, T))
    mask = _mask(rng, B, T) if masked else None
    m = None if mask is None else mask.tolist()
    n_clipped = ref_n_clipped(lp.tolist(), old.tolist())
    unclipped = ref_mean((-adv * np.exp(lp - old)).tolist(), m)
    expected = ref_policy_loss(lp.tolist(), old.tolist(), adv.tolist(), m)
    if spread == 0.01:
        assert n_clipped == 0 and abs(expected - unclipped) < 1e-12
    elif B * T > 1:
        assert n_clipped > 0 and abs(expected - unclipped) > 1e-6
    check(ppo.policy_loss, (lp, old, adv, mask), np.float64(expected))
    check(ppo.clip_fraction, (lp, old, 0.2, mask), np.float64(ref_clip_fraction(lp.tolist(), old.tolist(), 0.2, m)))
    check(ppo.clip_fraction, (lp, old, 0.2, mask, adv),
          np.float64(ref_clip_fraction(lp.tolist(), old.tolist(), 0.2, m, adv.tolist())))
    check(ppo.approx_kl, (lp, old, mask), np.float64(0.5 * ref_mean(((lp - old) ** 2).tolist(), m)))


@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("spread", [0.5, 0.05])
@pytest.mark.parametrize("masked", [False, True])
def test_value_loss_and_explained_variance(B, T, spread, masked):
    rng = np.random.default_rng(T + int(spread * 100) + 7)
    old = rng.normal(size=(B, T))
    v = old + rng.normal(0.0, spread, size=(B, T))
    ret = rng.normal(size=(B, T))
    mask = _mask(rng, B, T) if masked else None
    m = None if mask is None else mask.tolist()
    n_clipped = int(np.sum(np.abs(v - old) > 0.2))
    assert n_clipped == 0 if spread == 0.05 else (n_clipped > 0 or B * T == 1)
    check(ppo.value_loss, (v, old, ret, mask), np.float64(ref_value_loss(v.tolist(), old.tolist(), ret.tolist(), m)))
    if B * T > 1:
        ev = 1 - ref_var((ret - v).tolist(), m) / ref_var(ret.tolist(), m)
        check(ppo.explained_variance, (v, ret, mask), np.float64(ev))


def test_value_clip_changes_the_loss():
    v, old, ret = np.array([[1.0]]), np.array([[0.0]]), np.array([[0.1]])
    assert ppo.value_loss(v, old, ret) == pytest.approx(0.5 * 0.9 ** 2)  # max(0.81, 0.01)
    v, ret = np.array([[1.0]]), np.array([[2.0]])
    assert ppo.value_loss(v, old, ret) == pytest.approx(0.5 * 1.8 ** 2)  # clipped branch wins


@pytest.mark.parametrize("B,T,V", [(1, 1, 3), (2, 5, 11)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_and_entropy(B, T, V, temperature):
    rng = np.random.default_rng(V)
    logits = rng.normal(0.0, 3.0, size=(B, T, V))
    tokens = rng.integers(0, V, size=(B, T))
    mask = _mask(rng, B, T)
    kw = {"temperature": temperature}
    check(ppo.response_logprobs, (logits, tokens, mask),
          ref_logprobs(logits.tolist(), tokens.tolist(), mask.tolist(), temperature), **kw)
    check(ppo.entropy, (logits, mask), ref_entropy(logits.tolist(), mask.tolist(), temperature), **kw)


def test_policy_loss_gradient_under_jit():
    lp = jnp.array([[-1.0, -2.0, 0.0]])
    adv = jnp.array([[1.0, -2.0, 3.0]])
    g = jax.jit(jax.grad(ppo.policy_loss))(lp, lp, adv)
    np.testing.assert_allclose(g, -adv / 3, atol=1e-6)  # ratio 1: d/dlp of -A·exp(lp − old)


EOS, PAD, Q1, Q2 = 2, 0, 7, 9  # Q1/Q2 play 1577 ('▁?') and 29973 ('?')
HAND = np.array([
    [5, 6, 2, 0, 0, 0],   # EOS then pads
    [5, 7, 6, 2, 0, 0],   # '?' before EOS
    [5, 9, 7, 6, 2, 0],   # both, Q2 first
    [5, 7, 9, 6, 2, 0],   # both, Q1 first: Q2 still wins
    [2, 7, 5, 3, 3, 3],   # EOS first, Q1 after it: the override extends past the EOS
    [5, 6, 8, 4, 3, 3],   # no end: kept whole
])


@pytest.mark.parametrize("qids", [(), (Q1, Q2)])
def test_truncate_after_stop(qids):
    rng = np.random.default_rng(len(qids))
    rand = rng.integers(1, 12, size=(5, 10))
    for tokens in (HAND, rand):
        check(partial(ppo.truncate_after_stop, eos_id=EOS, pad_id=PAD, question_ids=qids), (tokens,),
              ref_truncate(tokens.tolist(), EOS, PAD, qids))
    out, lengths, stop = ppo.truncate_after_stop(HAND, EOS, PAD, qids)
    if qids:
        assert out[3].tolist() == [5, 7, 9, 0, 0, 0] and lengths.tolist() == [3, 2, 2, 3, 2, 6]
        assert stop.tolist() == [True, False, False, False, True, False]
    else:
        assert lengths.tolist() == [3, 4, 5, 5, 1, 6] and stop.tolist() == [True] * 5 + [False]


# golden cases per caption type: (response text, expected c); the NO_IN_YESNO checks are literal and
# case-sensitive, as the original ("Nope" starts with "No"; "no" does not)
CORRECTNESS = {
    AnswerType.GENERAL: [(" B. the cat", 0.0), ("", 0.0)],
    AnswerType.A_IN_ABCD: [("The correct option is C.", 0.0), ("\n A. dog", 1.0), ("a. dog", 0.0)],
    AnswerType.B_IN_ABCD: [(" B. the cat", 1.0), ("", 0.0)],
    AnswerType.C_IN_ABCD: [(" B. the cat", 0.0), ("The correct option is C.", 1.0), ("The correct option is C", 0.0)],
    AnswerType.D_IN_ABCD: [("D", 0.0), ("I think the correct option is D. because", 1.0)],
    AnswerType.NO_IN_YESNO: [("No, there is", 0.5), ("  No", 0.5), ("Nope", 0.5), ("Yes it is", -0.5), ("no", 0.0),
                             ("yes", 0.0), ("", 0.0)],
    AnswerType.YES_IN_YESNO: [("Yes it is", 0.0), ("No, there is", 0.0)],
}


@pytest.mark.parametrize("text,kind,expected", [(t, k, e) for k, cases in CORRECTNESS.items() for t, e in cases])
def test_correctness(text, kind, expected):
    assert ppo.correctness(text, kind) == expected
    assert ppo.correctness(text, int(kind)) == expected


def test_answer_type_values():
    assert [int(a) for a in AnswerType] == list(range(1, 8))
    assert AnswerType(6).name == "NO_IN_YESNO"
