"""One PPO rollout: sample responses, score them (reward, reference, values), shape rewards and advantages.

Host work (decoding, the symbolic correctness check, building each reward-model prompt with its facts shuffled)
sits here, on this process's rows of the global batch (`distributed.local_rows`; its statistics gather every
process's rows); every array pass is jitted with static shapes: queries are padded to one width, responses to
`max_new_tokens`, reward-model inputs to `rm_seq_len`, so nothing recompiles after the first PPO step.
"""
from __future__ import annotations

import dataclasses
import random
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlava import ppo, rm
from jaxlava.data.templates import encode_reward_input
from jaxlava.distributed import all_process_rows, global_batch, local_rows
from jaxlava.eval.pope import parse_answer
from jaxlava.generate import generate
from jaxlava.lora import make_lora


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int
    temperature: float
    rm_seq_len: int  # reward-model inputs are left padded to this width (an error names a longer one)
    question_stop: bool  # the paper's '?' truncation (quirk 4)
    kl_coef: float
    stop_penalty: float
    length_score: float
    correct_score: float
    reward_scale: float
    terminal_at_eos: bool  # our fix of quirk 2; False = the paper's slot T-1
    gamma: float
    lam: float
    mask_pads: bool  # whiten advantages over response slots only; False = all slots (the paper)
    score_chunk: int | None  # rows per scoring pass (None: the whole batch at once)
    prompt_group: int  # >1: each prompt sampled this many times in a row, its score centred per prompt (ours)
    seed: int
    yesno_pope: bool = False  # yes/no correctness from POPE's parse of the answer (ours); False: its first word


def yesno_verdict(text: str, caption_type) -> str:
    """A yes/no prompt's response as the word the paper's rule reads first ("No" / "Yes"), from POPE's parse of
    the whole answer ("red circle no." counts as No); other prompts' responses as they are."""
    if int(caption_type) not in (ppo.AnswerType.NO_IN_YESNO, ppo.AnswerType.YES_IN_YESNO):
        return text
    return "No" if parse_answer(text) == "no" else "Yes"


def question_ids(tokenizer) -> tuple[int, ...]:
    """Ids of the '?' tokens for the paper's truncation rule ('▁?' then '?', the latter winning)."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("▁?", "?")]
    return tuple(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def _row_rng(seed: int, step: int, row_id: str) -> random.Random:
    """The fact order of one reward prompt: a function of (seed, PPO step, record), so resumed runs repeat it."""
    return random.Random(zlib.crc32(f"{seed}:{step}:{row_id}".encode()))


def reward_inputs(roles, host: dict, texts: list[str], step: int, cfg: RolloutConfig) -> tuple[np.ndarray, ...]:
    """Left-padded reward-model ids and mask [B, rm_seq_len]: query turn + response + the reward prompt with the
    image's facts (shuffled per sample, spec §4.4)."""
    for rid, facts in zip(host["id"], host["facts"]):
        if roles.reward_facts and not facts:
            raise ValueError(f"PPO prompt {rid!r} has no facts, but the reward model was trained with facts in its "
                             "prompt; convert the prompts with their facts (data/convert.py ppo-prompts --facts)")
    p = roles.reward_processor
    pad = p.tokenizer.pad_token_id or 0
    ids = np.full((len(texts), cfg.rm_seq_len), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, text in enumerate(texts):
        rid, facts = host["id"][i], host["facts"][i]
        turn = [t for t in host["conversations"][i] if t["from"] == "human"][:1]
        seq = encode_reward_input(p.tokenizer, turn, text, facts, image_token_id=p.image_token_id,
                                  num_image_tokens=p.num_image_tokens, rng=_row_rng(cfg.seed, step, rid),
                                  with_facts=roles.reward_facts, facts_first=roles.reward_facts_first)
        if len(seq) > cfg.rm_seq_len:
            raise ValueError(f"PPO prompt {rid!r}: the reward-model input has {len(seq)} tokens, more than "
                             f"--rm-seq-len {cfg.rm_seq_len}; raise it")
        ids[i, -len(seq):], mask[i, -len(seq):] = seq, 1
    return ids, mask


def value_inputs(roles, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rollout's tokens as the value model reads them: each row's run of image placeholders re-expanded to the
    reward model's count (a 224 px policy with a 336 px reward model, spec §4.7), left padded."""
    p, r = roles.processor, roles.reward_processor
    if r is p or (r.num_image_tokens == p.num_image_tokens and r.image_token_id == p.image_token_id):
        return ids, mask
    extra = max(r.num_image_tokens - p.num_image_tokens, 0)
    out = np.full((ids.shape[0], ids.shape[1] + extra), r.tokenizer.pad_token_id or 0, np.int32)
    out_mask = np.zeros_like(out)
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].astype(bool)]
        img = np.flatnonzero(real == p.image_token_id)
        if len(img):
            real = np.concatenate([real[:img[0]], np.full(r.num_image_tokens, r.image_token_id), real[img[-1] + 1:]])
        out[b, -len(real):], out_mask[b, -len(real):] = real, 1
    return out, out_mask


def make_scorer(roles, graphs: ppo.Graphs, cfg: RolloutConfig):
    """jitted `score(params, frozen, rows) -> dict of [B, N] / [B] arrays` (see `Rollout`)."""
    def one_chunk(params, frozen, rows):
        policy = nnx.merge(graphs.policy, frozen["policy_base"])
        value_model = nnx.merge(graphs.value, frozen["value_base"])
        mask = rows["response_mask"]
        logits = ppo.response_logits(policy, rows, make_lora(params["policy"], graphs.policy_lora), cfg.temperature)
        ref_lora = None if frozen["reference"] is None else make_lora(frozen["reference"], graphs.policy_lora)
        ref_logits = ppo.response_logits(policy, rows, ref_lora, cfg.temperature)
        lp, ref_lp = (ppo.response_logprobs(x, rows["response"], mask) for x in (logits, ref_logits))
        v = ppo.values(value_model, rows, make_lora(params["value"], graphs.value_lora), params["value_head"])
        members = [{"lora": frozen["reward_lora"], "head": frozen["reward_head"]}, *frozen.get("reward_extra", ())]
        score = sum(rm.scores(value_model, m["head"], rows["rm_input_ids"], rows["reward_pixel_values"],
                              rows["rm_attention_mask"], lora=make_lora(m["lora"], graphs.value_lora),
                              image_pool=roles.reward_image_pool) for m in members) / len(members)
        return {"old_logprobs": lp, "ref_logprobs": ref_lp, "old_values": v, "score": score,
                "entropy": ppo.entropy(logits, mask), "kl": ppo.token_kl(logits, ref_logits, mask)}

    def score(params, frozen, rows):
        B = rows["input_ids"].shape[0]
        c = cfg.score_chunk or B
        if B % c:
            raise ValueError(f"--score-chunk {c} does not divide the rollout batch of {B}")
        chunks = jax.tree.map(lambda x: x.reshape(B // c, c, *x.shape[1:]), rows)
        out = jax.lax.map(lambda r: one_chunk(params, frozen, r), chunks)
        out = jax.tree.map(lambda x: x.reshape(B, *x.shape[2:]), out)
        score = ppo.group_centred(out["score"], cfg.prompt_group)  # unchanged unless --prompt-group
        rewards = ppo.token_rewards(score, out["old_logprobs"], out["ref_logprobs"], rows["response_length"],
                                    rows["has_stop"], rows["length_bonus"], rows["correct"], kl_coef=cfg.kl_coef,
                                    stop_penalty=cfg.stop_penalty, length_score=cfg.length_score,
                                    correct_score=cfg.correct_score, scale=cfg.reward_scale,
                                    terminal_at_eos=cfg.terminal_at_eos)
        adv, ret = ppo.advantages(rewards, out["old_values"], rows["response_mask"] if cfg.mask_pads else None,
                                  gamma=cfg.gamma, lam=cfg.lam)
        return out | {"rewards": rewards, "advantages": adv, "returns": ret}
    return jax.jit(score)


UPDATE_KEYS = ("input_ids", "attention_mask", "value_input_ids", "value_attention_mask", "pixel_values",
               "reward_pixel_values", "response", "response_mask", "old_logprobs", "old_values", "advantages",
               "returns")


def rollout(roles, params, frozen, prompts: dict, host: dict, step: int, cfg: RolloutConfig, scorer, mesh,
            *, temperature: float | None = None) -> tuple[dict, dict]:
    """Sample, score and shape one batch of prompts.  Returns (rows for the update: device arrays of UPDATE_KEYS,
    host statistics).  `temperature` 0 gives greedy responses (the held-out evaluation)."""
    tok = roles.processor.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id or 0
    temp = cfg.temperature if temperature is None else temperature
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    out = generate(roles.policy_base, prompts["input_ids"], prompts["pixel_values"], prompts["attention_mask"],
                   max_new_tokens=cfg.max_new_tokens, temperature=temp, top_p=1.0, top_k=0, eos_token_id=eos,
                   pad_token_id=pad, rng=key, lora=make_lora(params["policy"], roles.policy_lora))
    tokens = local_rows(out.tokens, mesh)  # host work below is on this process's rows (its `host` metadata)
    t1 = time.perf_counter()
    qids = question_ids(tok) if cfg.question_stop else ()
    response, lengths, has_stop = ppo.truncate_after_stop(tokens, eos, pad, qids)
    texts = tok.batch_decode(response, skip_special_tokens=True)
    correct = np.asarray([ppo.correctness(yesno_verdict(t, c) if cfg.yesno_pope else t, c)
                          for t, c in zip(texts, host["caption_type"])], np.float32)
    rm_ids, rm_mask = reward_inputs(roles, host, texts, step, cfg)
    q_ids, q_mask = local_rows(prompts["input_ids"], mesh), local_rows(prompts["attention_mask"], mesh)
    resp_mask = (response != pad).astype(np.int32)
    seq_ids = np.concatenate([q_ids, response], 1).astype(np.int32)
    seq_mask = np.concatenate([q_mask, resp_mask], 1).astype(np.int32)
    v_ids, v_mask = value_inputs(roles, seq_ids, seq_mask)
    local = {"input_ids": seq_ids, "attention_mask": seq_mask,
             "response": response.astype(np.int32), "response_mask": resp_mask,
             "rm_input_ids": rm_ids, "rm_attention_mask": rm_mask, "correct": correct,
             "response_length": lengths.astype(np.int32), "has_stop": has_stop.astype(np.int32),
             "length_bonus": host["length_bonus"].astype(np.float32)}
    rows = global_batch(local, mesh)
    same = v_ids is seq_ids
    rows.update(global_batch({} if same else {"value_input_ids": v_ids, "value_attention_mask": v_mask}, mesh))
    if same:
        rows["value_input_ids"], rows["value_attention_mask"] = rows["input_ids"], rows["attention_mask"]
    rows["pixel_values"] = prompts["pixel_values"]
    rows["reward_pixel_values"] = prompts.get("reward_pixel_values", prompts["pixel_values"])
    t2 = time.perf_counter()
    scored = scorer(params, frozen, rows)
    rows.update(scored)
    stats = jax.device_get({
        "score": scored["score"].mean(), "kl": scored["kl"].sum(axis=1).mean(),
        "kl_sampled": jnp.sum(scored["old_logprobs"] - scored["ref_logprobs"], axis=1).mean(),
        "entropy": ppo.masked_mean(scored["entropy"], rows["response_mask"]),
        "reward_total": scored["rewards"].sum(axis=1).mean(), "score_std": scored["score"].std(),
        # the spread the prompt-group baseline leaves (the responses to one prompt against each other)
        **({"score_std_in_group": ppo.group_centred(scored["score"], cfg.prompt_group).std()}
           if cfg.prompt_group > 1 else {})})
    t3 = time.perf_counter()
    every = all_process_rows({"n": lengths, "has_stop": has_stop, "correct": correct,
                              "length_bonus": np.asarray(host["length_bonus"])})  # the whole batch's statistics
    n, has_stop, correct = every["n"].astype(np.float64), every["has_stop"], every["correct"]
    stats.update({
        "response_length": float(n.mean()), "stop_rate": float(has_stop.mean()),
        "correct": float(correct.mean()),
        "stop_penalty": float(cfg.stop_penalty * (1 - has_stop).mean()),
        "length_term": float((n / cfg.max_new_tokens * every["length_bonus"] * cfg.length_score).mean()),
        "correct_term": float(correct.mean() * cfg.correct_score),
        "seconds_generate": t1 - t0, "seconds_host": t2 - t1, "seconds_score": t3 - t2})
    return {k: rows[k] for k in UPDATE_KEYS}, {k: float(v) for k, v in stats.items()}
