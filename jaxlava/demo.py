"""`make demo`: the LLaVA-RLHF recipe on the embedded shapes world, end to end on a CPU.

1. generate the shapes world (images, facts, conversations, preferences, probes, tokenizer);
2. SFT the small `shapes` model (as train/sft.py does), after training its vision tower (stage 0, jaxlava/shapes/vision.py);
3. train the fact-augmented reward model on top of it (as train/rm.py does);
4. sample answers to held-out questions with the SFT model and score each with the reward model;
5. export the SFT model to the llava-hf layout and check transformers' logits on it (when torch is installed).
"""
from __future__ import annotations

import dataclasses
import os
import random
import time

import numpy as np


def sample_and_score(run: str, world: str, n: int = 4) -> None:

    import jaxlava
    from jaxlava import rm
    from jaxlava.data.processor import LlavaProcessor
    from jaxlava.data.storage import open_source
    from jaxlava.data.templates import encode_prompt, encode_reward_input
    from jaxlava.lora import make_lora
    from jaxlava.peft_io import load_reward_model_adapter

    sft_dir, adapter_dir = os.path.join(run, "sft", "hf"), os.path.join(run, "rm", "adapter")
    model = jaxlava.from_pretrained(sft_dir)
    proc = LlavaProcessor.from_pretrained(sft_dir)
    lora_params, lora_cfg, head = load_reward_model_adapter(adapter_dir)
    lora = make_lora(lora_params, lora_cfg)
    tok = proc.tokenizer
    probes = open_source(world, "probe", "test")
    rng = random.Random(0)
    picks = rng.sample(range(len(probes)), n)
    for i in picks:
        rec = probes[i]
        turns = [{"from": "human", "value": "<image>\n" + rec["question"]}]
        ids = encode_prompt(tok, turns, image_token_id=proc.image_token_id, num_image_tokens=proc.num_image_tokens)
        px = proc.images([rec["image"]])
        out = jaxlava.generate(model, ids[None], px, np.ones((1, len(ids)), np.int32), max_new_tokens=48,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0)
        answer = tok.decode(np.asarray(out.tokens[0, :int(out.lengths[0])]), skip_special_tokens=True).strip()
        rids = encode_reward_input(tok, turns + [{"from": "gpt", "value": answer}], answer, rec["facts"],
                                   image_token_id=proc.image_token_id, num_image_tokens=proc.num_image_tokens,
                                   rng=random.Random(i))
        score = float(rm.scores(model, head, rids[None], px, np.ones((1, len(rids)), np.int32), lora=lora)[0])
        print(f"\nQ: {rec['question']}\n   gold: {rec['answer']}\n   model: {answer}\n   reward: {score:+.3f}")


def interop_check(run: str) -> None:
    import jaxlava
    try:
        import torch
        from transformers import LlavaForConditionalGeneration
    except ImportError:
        print("torch/transformers not installed: skipping the transformers comparison")
        return
    path = os.path.join(run, "sft", "hf")
    model = jaxlava.from_pretrained(path)
    cfg = model.config
    rng = np.random.default_rng(0)
    ids = np.concatenate([[1], np.full(cfg.num_image_tokens, cfg.image_token_index), rng.integers(3, 200, 8)])[None]
    px = rng.standard_normal((1, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    ours = np.asarray(model(ids, px, np.ones_like(ids)))
    hf = LlavaForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits.numpy()
    print(f"\ntransformers LlavaForConditionalGeneration on {path}: max |logit diff| = {np.abs(ref - ours).max():.2e}")


@dataclasses.dataclass
class DemoConfig:
    """`make demo`: the LLaVA-RLHF recipe on the embedded shapes world, end to end on a CPU."""
    out: str = "runs/demo"  # run folder (reused: finished stages resume or are skipped)
    sft_steps: int = 400
    rm_steps: int = 200


def main(argv: list[str] | None = None) -> int:
    from jaxlava.shapes import open_world
    from jaxlava.training import run_rm, run_sft
    from jaxlava.training.cli import parse
    args = parse(DemoConfig, argv, description=__doc__)
    t0 = time.time()
    world = os.path.join(args.out, "world")
    open_world(world, build=True)
    print("\n== SFT ==", flush=True)
    run_sft.main(["--data", world, "--out", os.path.join(args.out, "sft"), "--steps", str(args.sft_steps)])
    print("\n== reward model (with facts) ==", flush=True)
    run_rm.main(["--data", world, "--init", os.path.join(args.out, "sft", "hf"), "--out",
                 os.path.join(args.out, "rm"), "--steps", str(args.rm_steps)])
    print("\n== sampled answers and their rewards ==", flush=True)
    sample_and_score(args.out, world)
    interop_check(args.out)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; outputs in {args.out} (metrics.png in each stage folder)")
    return 0


if __name__ == "__main__":
    from jaxlava.hostenv import reexec_with_hugepages
    reexec_with_hugepages()
    raise SystemExit(main())
