"""The PPO stage of LLaVA-RLHF (spec §4.5–4.9): rewards, GAE, whitening, clipped losses, statistics, the
model passes that score a rollout, and the update step.  The run itself (roles, rollouts, the loop) is
`jaxlava.training.run_ppo`.

Every function is pure.  Given numpy arrays (or Python numbers) it computes with numpy and keeps
their precision (float64 in, float64 out); given a jax array or tracer anywhere in its arguments
it uses jax.numpy, so it can be jitted.  The choice is made by `_xp`, nothing else.

Formulas (B rollouts, T = response width, the paper's T = 896):

* sequence reward   R = s − 8·[no EOS] + (n/T)·length_bonus·(−10) + c·2        (§4.5)
  with c from `correctness` (GENERAL 0, X_IN_ABCD 1/0, NO_IN_YESNO ±0.5, YES_IN_YESNO 0).
* token rewards     r_t = −0.1·max(logπ_θ − logπ_ref, 0)  (k1 KL clamped at 0, fixed β; quirk 8),
                    R added at slot T−1, the whole row ×10 (quirk 3)                 (§4.6–4.7)
* GAE               δ_t = r_t + γV_{t+1} − V_t, V_T = 0, A_t = δ_t + γλA_{t+1}; returns = A + V
                    (before whitening); the paper uses γ = λ = 1 over all T slots.
* whitening         A ← (A − mean)/(std_biased + 1e-8); the mean is not added back.
* policy loss       mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(logπ − logπ_old), ε = 0.2
* value loss        0.5·mean(max((v − ret)², (clip(v, v_old ± 0.2) − ret)²))   (vf_coef 0.1 applied by the caller)

The paper averages over ALL B×T slots, pads included (quirk 2); pass `mask=None` for that, or a
response mask for a per-token mean.  Quirks behind flags:

* quirk 2 (terminal reward at slot T−1, not at EOS): `token_rewards(..., terminal_at_eos=True)` moves it
  to slot n−1.
* quirk 4 (any '?' truncates the response and costs the −8 no-EOS penalty):
  `truncate_after_stop(..., question_ids=(1577, 29973))` reproduces it; the default `()` does not.
* quirk 12 (logits / temperature): `temperature` of `response_logprobs` / `entropy`.
"""
from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from jaxlava.lora import LoraConfig, make_lora
from jaxlava.model.heads import apply_scalar_head
from jaxlava.training.step import make_train_step

WHITEN_EPS = 1e-8


def _xp(*arrays):
    """jax.numpy as soon as one argument is a jax array (tracers included), numpy otherwise."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def masked_mean(x, mask=None):
    """Mean of x over all slots (mask None) or over the slots where mask is nonzero (0 if there are none)."""
    xp = _xp(x, mask)
    x = xp.asarray(x)
    if mask is None:
        return xp.mean(x)
    m = xp.asarray(mask).astype(x.dtype)
    return xp.sum(x * m) / xp.maximum(xp.sum(m), 1e-12)


def masked_var(x, mask=None):
    """Biased variance of x over all / masked slots."""
    xp = _xp(x, mask)
    x = xp.asarray(x)
    return masked_mean(xp.square(x - masked_mean(x, mask)), mask)


# ---------------------------------------------------------------- advantages

def _gae_step(carry, rv, gamma, lam):
    adv_next, v_next = carry
    r, v = rv
    adv = r + gamma * v_next - v + gamma * lam * adv_next
    return (adv, v), adv


def gae(rewards, values, gamma=1.0, lam=1.0):
    """[B, T] rewards and values -> (advantages, returns), with V_T = 0 and returns = A + V (unwhitened)."""
    xp = _xp(rewards, values)
    dt = xp.result_type(rewards, values)
    r, v = xp.asarray(rewards, dtype=dt), xp.asarray(values, dtype=dt)
    carry = (xp.zeros_like(r[:, 0]), xp.zeros_like(r[:, 0]))
    if xp is jnp:
        _, adv_t = lax.scan(lambda c, x: _gae_step(c, x, gamma, lam), carry, (r.T, v.T), reverse=True)
        adv = adv_t.T
    else:
        adv = np.empty_like(r)
        for t in range(r.shape[1] - 1, -1, -1):
            carry, adv[:, t] = _gae_step(carry, (r[:, t], v[:, t]), gamma, lam)
    return adv, adv + v


def whiten(x, mask=None):
    """(x − mean)/(biased std + 1e-8); the mean is NOT added back.

    mask None: statistics over all slots (the paper).  With a mask the statistics are over the masked
    slots and the masked-out slots are set to 0.  Inside jit with globally sharded arrays these means are
    already global (cross-host) statistics, like the paper's all-gathered `full_batch` whitening.
    """
    xp = _xp(x, mask)
    x = xp.asarray(x)
    out = (x - masked_mean(x, mask)) / (xp.sqrt(masked_var(x, mask)) + WHITEN_EPS)
    return out if mask is None else xp.where(xp.asarray(mask) != 0, out, 0)


# ---------------------------------------------------------------- rewards

class AnswerType(enum.IntEnum):
    """`caption_type` of a PPO prompt: the ground truth used by the symbolic correctness reward."""
    GENERAL = 1
    A_IN_ABCD = 2
    B_IN_ABCD = 3
    C_IN_ABCD = 4
    D_IN_ABCD = 5
    NO_IN_YESNO = 6
    YES_IN_YESNO = 7


def correctness(text: str, caption_type) -> float:
    """Symbolic correctness c of a decoded response (spec §4.5); case-sensitive like the original."""
    kind = AnswerType(int(caption_type))
    stripped = text.strip()
    if AnswerType.A_IN_ABCD <= kind <= AnswerType.D_IN_ABCD:
        letter = "ABCD"[kind - AnswerType.A_IN_ABCD]
        return 1.0 if stripped.startswith(f"{letter}.") or f"correct option is {letter}." in text else 0.0
    if kind == AnswerType.NO_IN_YESNO:
        return 0.5 if stripped.startswith("No") else -0.5 if stripped.startswith("Yes") else 0.0
    return 0.0  # GENERAL, and YES_IN_YESNO on purpose (no symbolic reward for "Yes")


def token_rewards(score, logprobs, ref_logprobs, response_length, has_stop, length_bonus, correct, *,
                  kl_coef=0.1, stop_penalty=-8.0, length_score=-10.0, correct_score=2.0, scale=10.0,
                  terminal_at_eos: bool = False):
    """[B] sequence data + [B, T] logprobs (0 at pads on both sides) -> [B, T] shaped rewards × scale.

    T (the arrays' width) is also the length normaliser.  The terminal reward sits at slot T−1 (the
    paper) or, with terminal_at_eos, at slot response_length−1 (clipped into [0, T−1]).
    """
    xp = _xp(score, logprobs, ref_logprobs, response_length, has_stop, length_bonus, correct)
    lp, ref = xp.asarray(logprobs), xp.asarray(ref_logprobs)
    dt = xp.result_type(lp, ref)

    def f(a):
        return xp.asarray(a).astype(dt)

    T = lp.shape[-1]
    n = f(response_length)
    terminal = (f(score) + stop_penalty * (1 - f(has_stop)) + n / T * f(length_bonus) * length_score
                + f(correct) * correct_score)
    slot = xp.clip(xp.asarray(response_length) - 1, 0, T - 1) if terminal_at_eos else xp.full(n.shape, T - 1)
    at_terminal = xp.arange(T)[None, :] == slot[:, None]
    r = -kl_coef * xp.maximum(lp - ref, 0) + xp.where(at_terminal, terminal[:, None], 0)
    return scale * r


def group_centred(score, group: int):
    """[B] scores -> each minus the mean of its group of `group` consecutive rows, B = groups × group.

    With each prompt sampled `group` times in a row (`--prompt-group`), this is a per-prompt baseline: what is
    left is how a response compares with the other responses to the same image and question, not how that image
    scores on average.  Ours; the paper samples each prompt once and uses the raw score (group 0 or 1: unchanged).
    """
    if group <= 1:
        return score
    xp = _xp(score)
    s = xp.asarray(score)
    if s.shape[0] % group:
        raise ValueError(f"{s.shape[0]} scores do not split into groups of {group}")
    g = s.reshape(-1, group)
    return (g - g.mean(axis=1, keepdims=True)).reshape(s.shape)


def truncate_after_stop(tokens, eos_id, pad_id, question_ids=()):
    """[B, N] sampled tokens -> (tokens, lengths, has_stop) after the paper's post-truncation.

    The end is the first EOS (kept); each id of `question_ids` that occurs overrides it with its own
    first occurrence, later ids winning (the paper: question_ids=(1577, 29973), quirk 4).  Slots after
    the end become pad_id; rows with no end are kept whole.  lengths = non-pad tokens, has_stop = an
    EOS is still inside the kept part.
    """
    xp = _xp(tokens)
    tokens = xp.asarray(tokens)
    N = tokens.shape[1]

    def first(token_id):
        hit = tokens == token_id
        return xp.where(hit.any(axis=1), xp.argmax(hit, axis=1), N)

    end = first(eos_id)
    for q in question_ids:
        at = first(q)
        end = xp.where(at < N, at, end)
    keep = xp.arange(N)[None, :] <= end[:, None]
    out = xp.where(keep, tokens, pad_id).astype(tokens.dtype)
    return out, xp.sum(out != pad_id, axis=1), xp.any(keep & (tokens == eos_id), axis=1)


# ---------------------------------------------------------------- per-token quantities

def _logsumexp(xp, z):
    top = xp.max(z, axis=-1, keepdims=True)
    return (top + xp.log(xp.sum(xp.exp(z - top), axis=-1, keepdims=True)))[..., 0]


def _mask_out(xp, x, mask):
    return x if mask is None else xp.where(xp.asarray(mask) != 0, x, 0)


def response_logprobs(logits, tokens, mask, temperature=1.0):
    """logits [B, T, V] already aligned with the response tokens [B, T] -> [B, T] log π(token), 0 where mask is 0."""
    xp = _xp(logits, tokens, mask)
    z = xp.asarray(logits) / temperature
    picked = xp.take_along_axis(z, xp.asarray(tokens)[..., None], axis=-1)[..., 0]
    return _mask_out(xp, picked - _logsumexp(xp, z), mask)


def entropy(logits, mask=None, temperature=1.0):
    """[B, T, V] logits -> [B, T] entropy of π at each slot, 0 where mask is 0."""
    xp = _xp(logits, mask)
    z = xp.asarray(logits) / temperature
    logp = z - _logsumexp(xp, z)[..., None]
    return _mask_out(xp, -xp.sum(xp.exp(logp) * logp, axis=-1), mask)


# ---------------------------------------------------------------- losses

def policy_loss(logprobs, old_logprobs, advantages, mask=None, clip=0.2):
    """PPO clipped surrogate, mean over all slots (mask None, the paper) or over the masked slots."""
    xp = _xp(logprobs, old_logprobs, advantages, mask)
    ratio = xp.exp(xp.asarray(logprobs) - old_logprobs)
    a = xp.asarray(advantages)
    return masked_mean(xp.maximum(-a * ratio, -a * xp.clip(ratio, 1.0 - clip, 1.0 + clip)), mask)


def value_loss(values, old_values, returns, mask=None, clip=0.2):
    """0.5 · mean(max((v − ret)², (clip(v, old ± clip) − ret)²)); vf_coef is the caller's."""
    xp = _xp(values, old_values, returns, mask)
    v, old = xp.asarray(values), xp.asarray(old_values)
    v_clipped = xp.clip(v, old - clip, old + clip)
    return 0.5 * masked_mean(xp.maximum(xp.square(v - returns), xp.square(v_clipped - returns)), mask)


# ---------------------------------------------------------------- statistics

def approx_kl(logprobs, old_logprobs, mask=None):
    """0.5 · mean((logπ − logπ_old)²), the paper's `approxkl`."""
    xp = _xp(logprobs, old_logprobs, mask)
    return 0.5 * masked_mean(xp.square(xp.asarray(logprobs) - old_logprobs), mask)


def clip_fraction(logprobs, old_logprobs, clip=0.2, mask=None, advantages=None):
    """Fraction of slots with |ρ − 1| > clip; with `advantages`, of slots where the clipped term is the
    larger one (strictly), i.e. where clipping changes the loss (the original's `clipfrac`)."""
    xp = _xp(logprobs, old_logprobs, mask, advantages)
    lp = xp.asarray(logprobs)
    ratio = xp.exp(lp - old_logprobs)
    if advantages is None:
        hit = xp.abs(ratio - 1.0) > clip
    else:
        hit = -advantages * xp.clip(ratio, 1.0 - clip, 1.0 + clip) > -advantages * ratio
    return masked_mean(hit.astype(lp.dtype), mask)


def explained_variance(values, returns, mask=None):
    """1 − var(ret − v)/var(ret) (biased variances over all / masked slots)."""
    xp = _xp(values, returns, mask)
    ret = xp.asarray(returns)
    return 1.0 - masked_var(ret - values, mask) / xp.maximum(masked_var(ret, mask), 1e-12)


# ---------------------------------------------------------------- model passes (jittable)
# A rollout row is the query (left padded to a fixed width) followed by the response (right padded to N =
# max_new_tokens), so the real tokens are contiguous: `input_ids`/`attention_mask` [B, Tq+N], `response` and
# `response_mask` [B, N].  The token at response slot t is predicted from position Tq−1+t (the N+1-th last).
# The value model reads `value_input_ids`/`value_attention_mask`: the same tokens with the image placeholders
# expanded for the reward model's own image size (the same arrays when policy and RM share a base).

def _response_hidden(model, rows: dict, pixels, lora, prefix: str = ""):
    n = rows["response"].shape[1]
    _, hidden = model(rows[prefix + "input_ids"], pixels, rows[prefix + "attention_mask"], lora=lora,
                      return_hidden=True)
    return hidden[:, -n - 1:-1]


def response_logits(model, rows: dict, lora=None, temperature: float = 1.0):
    """The policy's temperature-scaled logits at the response slots [B, N, V]."""
    return model.lm_logits(_response_hidden(model, rows, rows["pixel_values"], lora)) / temperature


def policy_logprobs(model, rows: dict, lora=None, temperature: float = 1.0):
    """(log π(response token) [B, N], entropy [B, N]), both 0 at pad slots."""
    logits = response_logits(model, rows, lora, temperature)
    mask = rows["response_mask"]
    return response_logprobs(logits, rows["response"], mask), entropy(logits, mask)


def token_kl(logits, ref_logits, mask=None):
    """Exact KL(π ‖ π_ref) of the next-token distributions at each slot [B, N] (0 where mask is 0): a
    non-negative diagnostic, unlike the sampled k1 estimate that shapes the rewards."""
    xp = _xp(logits, ref_logits, mask)
    logp = logits - _logsumexp(xp, logits)[..., None]
    logq = ref_logits - _logsumexp(xp, ref_logits)[..., None]
    return _mask_out(xp, xp.sum(xp.exp(logp) * (logp - logq), axis=-1), mask)


def values(model, rows: dict, lora, head: dict):
    """V at each response slot [B, N] (the value model reads the RM-resolution images, spec §4.7)."""
    return apply_scalar_head(head, _response_hidden(model, rows, rows["reward_pixel_values"], lora, "value_"))


# ---------------------------------------------------------------- the update

@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Spec §4.8.  `mask_pads=False` averages over every slot, pads included, as the paper does (quirk 2)."""
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    temperature: float = 1.0
    mask_pads: bool = False


@dataclasses.dataclass(frozen=True)
class Graphs:
    """What the jitted passes need besides arrays: the bases' graph definitions and the adapters' configs."""
    policy: object  # nnx GraphDef of the policy (and reference) base
    value: object  # of the reward-model base (value and reward roles); may be the same object
    policy_lora: LoraConfig
    value_lora: LoraConfig


ROLES = {"policy": "policy", "value": "value", "value_head": "value"}  # the trainable parameters' roles


def update_loss_and_grad(graphs: Graphs, loss_cfg: LossConfig):
    """`(params, frozen, minibatch, rng) -> (loss, aux, grads)` over {policy, value, value_head}.

    frozen = {"policy_base": state, "value_base": state} (the same arrays when one base serves both)."""
    def loss_fn(params, frozen, mb, rng):
        policy = nnx.merge(graphs.policy, frozen["policy_base"])
        value_model = nnx.merge(graphs.value, frozen["value_base"])
        k1, k2 = jax.random.split(rng)
        drop = lambda cfg, k: k if cfg.dropout > 0 else None  # noqa: E731
        lp, ent = policy_logprobs(policy, mb, make_lora(params["policy"], graphs.policy_lora,
                                                        drop(graphs.policy_lora, k1)), loss_cfg.temperature)
        v = values(value_model, mb, make_lora(params["value"], graphs.value_lora, drop(graphs.value_lora, k2)),
                   params["value_head"])
        mask = mb["response_mask"] if loss_cfg.mask_pads else None
        pg = policy_loss(lp, mb["old_logprobs"], mb["advantages"], mask, loss_cfg.clip)
        vf = value_loss(v, mb["old_values"], mb["returns"], mask, loss_cfg.value_clip)
        tokens = mb["response_mask"]
        aux = {"policy_loss": pg, "value_loss": vf,
               "clipfrac": clip_fraction(lp, mb["old_logprobs"], loss_cfg.clip, tokens, mb["advantages"]),
               "approxkl": approx_kl(lp, mb["old_logprobs"], tokens), "entropy": masked_mean(ent, tokens),
               "explained_variance": explained_variance(v, mb["returns"], tokens)}
        return pg + loss_cfg.vf_coef * vf, aux

    def loss_and_grad(params, frozen, mb, rng):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, mb, rng)
        # each role's share of the gradient (before clipping): one norm over both can hide a starved policy
        aux = {**aux, **{f"{role}_grad_norm": optax.global_norm({k: g for k, g in grads.items() if ROLES[k] == role})
                         for role in set(ROLES.values())}}
        return loss, aux, grads
    return loss_and_grad


def make_update_step(graphs: Graphs, loss_cfg: LossConfig, tx, grad_accum: int = 1, schedule=None):
    """One optimizer update on one minibatch of rollouts: `(state, frozen, mb) -> (TrainState, StepOutput)`,
    gradients accumulated over `grad_accum` microbatches, non-finite updates skipped."""
    return make_train_step(update_loss_and_grad(graphs, loss_cfg), tx, grad_accum, schedule)


def advantages(rewards, old_values, response_mask=None, *, gamma: float = 1.0, lam: float = 1.0):
    """(whitened advantages, returns): GAE on the shaped rewards, then whitening over the whole batch (over the
    response slots when `response_mask` is given; the paper whitens all slots)."""
    adv, ret = gae(rewards, old_values, gamma, lam)
    return whiten(adv, response_mask), ret
