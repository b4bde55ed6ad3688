"""Jitted KV-cache sampler for LLaVA (rollouts for PPO, evaluation, chat).

`generate` prefills the image features and the (left-padded) prompt once, then decodes in a
`lax.while_loop` over a preallocated KV cache that is DONATED to each jitted call, so XLA
updates it in place.  The loop stops as soon as every row has stopped.  Prompt lengths are
bucketed (`bucket_length`) and `max_new_tokens`, greedy-vs-sampling, `top_k` and whether a
nucleus is used are static, so prompts of a new length in the same bucket reuse the compiled
programs.  Sampling math (`sample_logits`) is pure and in float32.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxlava import distributed
from jaxlava.data.buckets import bucket_length
from jaxlava.model import check_image_tokens, positions_from_mask
from jaxlava.sharding import batch_sharding, constrain

CACHE_AXES = ("batch", "kv_heads", "seq", "head_dim")  # one layer of the per-layer cache


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens] int32; after a row stops: its stop token, then pad_token_id
    lengths: jax.Array  # [B] int32: generated tokens per row, the stop token included
    logprobs: jax.Array | None  # [B, max_new_tokens] float32 (0 on pads) when return_logprobs


class SamplingParams(NamedTuple):
    """Static (hashable) sampling choices; the temperature and top_p values themselves are traced."""
    greedy: bool
    top_k: int
    nucleus: bool


# ---------------------------------------------------------------------------------------------
# Sampling (pure, float32)
# ---------------------------------------------------------------------------------------------
def _inverse_cdf(probs: jax.Array, u: jax.Array, block: int = 256) -> jax.Array:
    """Index i with cdf[i-1] < (1-u)*total <= cdf[i] per row; zero-probability entries are never picked.

    Two-level scan (cumsum over blocks of the vocabulary, then within the chosen block): a full-length
    cumsum over a 32k vocabulary is a slow reduce-window on CPU."""
    B, V = probs.shape
    nb = -(-V // block)
    p = jnp.pad(probs, ((0, 0), (0, nb * block - V))).reshape(B, nb, block)
    bsum = p.sum(-1)
    bcdf = jnp.cumsum(bsum, axis=-1)
    target = (1.0 - u) * bcdf[:, -1]  # in (0, total]
    bi = jnp.minimum(jnp.sum(bcdf < target[:, None], axis=-1), nb - 1)
    inner = jnp.take_along_axis(p, bi[:, None, None], axis=1)[:, 0]  # [B, block]
    before = jnp.take_along_axis(bcdf - bsum, bi[:, None], axis=1)
    j = jnp.sum(before + jnp.cumsum(inner, axis=-1) < target[:, None], axis=-1)
    pos = jnp.arange(block)
    nz = inner > 0  # the chosen block always holds mass; rounding must not land on an empty entry
    first = jnp.min(jnp.where(nz, pos, block), axis=-1)
    last = jnp.max(jnp.where(nz, pos, -1), axis=-1)
    return (bi * block + jnp.clip(j, first, last)).astype(jnp.int32)


def filter_logits(logits: jax.Array, top_k: int, top_p, nucleus: bool):
    """Mask (to -inf) everything outside the top-k and outside the nucleus.

    Returns (logits, order): with a nucleus the logits come back sorted descending and `order`
    maps sorted positions to token ids; otherwise order is None.
    """
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    V = logits.shape[-1]
    if top_k and top_k < V:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits >= kth, logits, neg)
    if not nucleus:
        return logits, None
    iota = jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), logits.shape)
    neg_sorted, order = jax.lax.sort((-logits, iota), dimension=-1, num_keys=1)
    sorted_logits = -neg_sorted
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    keep = before < top_p
    keep = keep.at[:, 0].set(True)
    return jnp.where(keep, sorted_logits, neg), order


def sample_logits(logits: jax.Array, rng, temperature, top_p, params: SamplingParams):
    """logits [B,V] -> (token [B] int32, logprob [B] of the token under softmax(logits / T)).

    The logprob is of the temperature-scaled distribution before top-k / top-p truncation
    (the policy's own distribution, what PPO's ratio uses); greedy reports log_softmax(logits).
    """
    logits = logits.astype(jnp.float32)
    scaled = logits if params.greedy else logits / jnp.asarray(temperature, jnp.float32)
    top = jnp.max(scaled, axis=-1, keepdims=True)
    e = jnp.exp(scaled - top)  # one exp pass serves the sampler and the logprob
    logz = top[:, 0] + jnp.log(jnp.sum(e, axis=-1))
    if params.greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        u = jax.random.uniform(rng, (logits.shape[0],), jnp.float32)
        if params.top_k or params.nucleus:  # the top token is always kept, so `top` stays the max
            kept, order = filter_logits(scaled, params.top_k, top_p, params.nucleus)
            idx = _inverse_cdf(jnp.exp(kept - top), u)
            tok = idx if order is None else jnp.take_along_axis(order, idx[:, None], axis=-1)[:, 0]
        else:
            tok = _inverse_cdf(e, u)
    lp = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - logz
    return tok, lp


# ---------------------------------------------------------------------------------------------
# Jitted prefill and decode
# ---------------------------------------------------------------------------------------------
def _is_stop(tok, stop_ids):
    return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)


def _record(carry, tok, lp, pad_id, stop_ids):
    """Write token #step of every row (pads for rows already stopped) and advance the state."""
    step, done = carry["step"], carry["done"]
    out_tok = jnp.where(done, pad_id, tok)
    tokens = jax.lax.dynamic_update_slice(carry["tokens"], out_tok[:, None], (0, step))
    logprobs = jax.lax.dynamic_update_slice(carry["logprobs"], jnp.where(done, 0.0, lp)[:, None], (0, step))
    lengths = carry["lengths"] + (~done).astype(jnp.int32)
    done = done | _is_stop(tok, stop_ids)
    return dict(carry, tokens=tokens, logprobs=logprobs, lengths=lengths, done=done, step=step + 1, last=tok)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _split(graphdef, state, lora):
    """Per-layer copies of the decoder weights (and adapter), made once per `generate` call: the dots of
    an unrolled step then read them in place instead of slicing the stacked arrays at every step."""
    return nnx.merge(graphdef, state).language_model.split_layers(lora)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params"))
def _prefill(graphdef, state, layers, input_ids, pixel_values, attention_mask, rng, temperature, top_p,
             pad_id, stop_ids, lora, *, max_new_tokens, params):
    """Encode the images, fill a fresh per-layer KV cache [B,KV,T+N,Dh] with the prompt, sample token #0."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    B, T = input_ids.shape
    cache = jax.tree.map(lambda c: constrain(c, CACHE_AXES), lm.init_cache(B, T + max_new_tokens, per_layer=True))
    mask = attention_mask.astype(jnp.int32)
    kv_mask = jnp.concatenate([mask, jnp.ones((B, max_new_tokens), jnp.int32)], axis=1)
    embeds = model.embed(input_ids, pixel_values)
    hidden, cache = lm(embeds, positions_from_mask(mask), kv_mask, cache=cache, cache_index=0, lora=lora,
                       layers=layers)
    logits = model.lm_logits(hidden[:, -1:])[:, 0]  # left padding: the last slot is every row's last token
    rng, sub = jax.random.split(rng)
    tok, lp = sample_logits(logits, sub, temperature, top_p, params)
    carry = dict(cache=cache, kv_mask=kv_mask, pos=jnp.sum(mask, axis=1), prompt_len=jnp.int32(T),
                 tokens=jnp.full((B, max_new_tokens), pad_id, jnp.int32),
                 logprobs=jnp.zeros((B, max_new_tokens), jnp.float32), lengths=jnp.zeros((B,), jnp.int32),
                 done=jnp.zeros((B,), bool), step=jnp.int32(0), rng=rng, last=tok)
    return _record(carry, tok, lp, pad_id, stop_ids)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "chunk"),
                   donate_argnames=("carry",))
def _decode(graphdef, state, layers, carry, temperature, top_p, pad_id, stop_ids, lora, *, max_new_tokens, params,
            chunk):
    """Decode up to `chunk` more tokens (stops early when every row is done); the carry (KV cache
    included) is donated, so the cache is updated in place across calls and loop steps."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    limit = jnp.minimum(carry["step"] + chunk, max_new_tokens)

    def cond(c):
        return (c["step"] < limit) & ~jnp.all(c["done"])

    def body(c):
        tok = c["last"]
        x = lm.embed(tok[:, None])
        positions = (c["pos"] + c["step"] - 1)[:, None]  # token #step-1 sits at position prompt + step - 1
        index = c["prompt_len"] + c["step"] - 1
        hidden, cache = lm(x, positions, c["kv_mask"], cache=c["cache"], cache_index=index, lora=lora,
                           layers=layers)
        logits = model.lm_logits(hidden)[:, 0]
        rng, sub = jax.random.split(c["rng"])
        nxt, lp = sample_logits(logits, sub, temperature, top_p, params)
        return _record(dict(c, cache=cache, rng=rng), nxt, lp, pad_id, stop_ids)

    return jax.lax.while_loop(cond, body, carry)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
def left_pad_to_bucket(input_ids, attention_mask, pad_token_id: int, bucket: Callable[[int], int] = bucket_length):
    """Move every row's tokens to the right end (left padding) of a bucketed length. Host numpy."""
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids must be [B,T] with an attention_mask of the same shape, got {ids.shape} "
                         f"and {mask.shape}")
    lens = mask.astype(bool).sum(axis=1)
    if (lens == 0).any():
        raise ValueError(f"rows {np.flatnonzero(lens == 0).tolist()} of the prompt batch are empty")
    T = bucket(int(lens.max()))
    out_ids = np.full((ids.shape[0], T), pad_token_id, np.int32)
    out_mask = np.zeros((ids.shape[0], T), np.int32)
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].astype(bool)]
        out_ids[b, T - len(real):] = real
        out_mask[b, T - len(real):] = 1
    return out_ids, out_mask


def _is_global_batch(x) -> bool:
    """Whether `x` is a batch laid out by `jaxlava.distributed.global_batch` (dim 0 on the mesh's batch axes), or
    any array spanning other processes' devices."""
    if not isinstance(x, jax.Array) or not isinstance(x.sharding, NamedSharding):
        return False
    return not x.is_fully_addressable or x.sharding.is_equivalent_to(batch_sharding(x.sharding.mesh, x.ndim), x.ndim)


def pack_prompts(input_ids, attention_mask, pad_token_id: int):
    """Prompts -> left-packed device (ids, mask) at a bucketed width.  Host arrays are packed whole.  A global batch
    (`_is_global_batch`; on several processes it spans other hosts' devices) is packed on each process from its own
    rows, at the bucket the widest process needs (a collective), and goes back to the batch layout: every process
    compiles the same programs, and one process packs exactly as the whole batch would be."""
    if not _is_global_batch(input_ids):
        ids, mask = left_pad_to_bucket(input_ids, attention_mask, pad_token_id)
        return jnp.asarray(ids), jnp.asarray(mask)
    mesh = input_ids.sharding.mesh
    rows = [None if x is None else distributed.local_rows(x, mesh) for x in (input_ids, attention_mask)]
    packed = left_pad_to_bucket(*rows, pad_token_id, bucket=lambda n: distributed.max_over_processes(bucket_length(n)))
    return tuple(jax.make_array_from_process_local_data(batch_sharding(mesh, 2), x) for x in packed)


def generate(model, input_ids, pixel_values, attention_mask, *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_id: int | None, pad_token_id: int,
             stop_token_ids=(), rng=None, return_logprobs: bool = False, lora=None,
             stream: Callable[[np.ndarray, np.ndarray], None] | None = None, chunk: int = 16) -> GenerateOutput:
    """Sample up to `max_new_tokens` tokens after each prompt row.

    input_ids/attention_mask [B,T] (any padding; rows are re-packed to left padding at a bucketed
    length; host arrays, or a global batch, see `pack_prompts`), pixel_values [B,3,H,W] or None.
    temperature 0 = greedy; top_k 0 = off; top_p 1 = off.
    A row stops at eos_token_id or any of stop_token_ids; its stop token is kept, then pad_token_id.
    `stream(tokens[B,n], done[B])`, if given, is called with each new chunk of tokens (host numpy).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    check_image_tokens(input_ids, model.config)
    ids, mask = pack_prompts(input_ids, attention_mask, pad_token_id)
    B, T = ids.shape
    stops = [s for s in ([eos_token_id] if eos_token_id is not None else []) + list(stop_token_ids)]
    stop_ids = jnp.asarray(stops or [-1], jnp.int32)
    params = SamplingParams(greedy=temperature == 0.0, top_k=int(top_k), nucleus=top_p < 1.0)
    if rng is None:
        if not params.greedy:
            raise ValueError("sampling (temperature > 0) needs an explicit rng key")
        rng = jax.random.key(0)
    graphdef, state = nnx.split(model)
    layers = _split(graphdef, state, lora)
    sc = dict(temperature=jnp.float32(max(temperature, 1e-6)), top_p=jnp.float32(top_p),
              pad_id=jnp.int32(pad_token_id), stop_ids=stop_ids, lora=lora)
    pixels = pixel_values if pixel_values is None or isinstance(pixel_values, jax.Array) else jnp.asarray(pixel_values)
    carry = _prefill(graphdef, state, layers, ids, pixels, mask, rng, **sc,
                     max_new_tokens=max_new_tokens, params=params)
    if stream is None:
        carry = _decode(graphdef, state, layers, carry, **sc, max_new_tokens=max_new_tokens, params=params,
                        chunk=max_new_tokens)
    else:
        shown = 0
        while True:
            step, done = int(carry["step"]), np.asarray(carry["done"])
            if step > shown:
                stream(np.asarray(carry["tokens"][:, shown:step]), done)
                shown = step
            if step >= max_new_tokens or done.all():
                break
            carry = _decode(graphdef, state, layers, carry, **sc, max_new_tokens=max_new_tokens, params=params,
                            chunk=chunk)
    return GenerateOutput(carry["tokens"], carry["lengths"], carry["logprobs"] if return_logprobs else None)


def compiled_programs() -> int:
    """How many programs the sampler has compiled so far (prefill + decode), for recompilation checks."""
    return _split._cache_size() + _prefill._cache_size() + _decode._cache_size()
