"""Decode throughput: jaxlava.generate vs transformers' PyTorch generate, same weights, same run, CPU.

    JAX_PLATFORMS=cpu .venv/bin/python bench/decode.py --out bench/results/decode.json

For each model (random weights, vocab 32000, a 224px image = 256 placeholder tokens in every prompt)
the jaxlava model is exported with `jaxlava.save_pretrained` and loaded into transformers'
`LlavaForConditionalGeneration`.  Both sample exactly `--new-tokens` tokens at temperature 1
(no top-k / top-p; HF gets min_new_tokens, jaxlava no EOS) for each batch size.  The roofline is
the time to move the bytes every decode step must read (decoder + lm_head weights and the live KV
cache) at the numpy copy bandwidth measured in the same run, plus the prefill FLOPs at the matmul
ceiling measured in the same run (a step is charged max(bytes/bandwidth, flops/peak)).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from typing import Annotated

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

import jaxlava  # noqa: E402
from common import copy_bandwidth, machine, matmul_ceiling, repeat, table, write_json  # noqa: E402
from jaxlava.config import LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from jaxlava.hostenv import reexec_with_hugepages  # noqa: E402

MODELS = {
    # ~62M parameters: CLIP 4 layers x256, LLaMA 8 layers x512
    "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
                  text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8)),
    # ~250M parameters: CLIP 6 layers x512, LLaMA 12 layers x1024
    "large": dict(vision=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8),
                  text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                            num_attention_heads=16)),
}
IMAGE_TOKEN = 31999


def make_config(name: str) -> LlavaConfig:
    m = MODELS[name]
    return LlavaConfig(vision=VisionConfig(image_size=224, patch_size=14, projection_dim=256, **m["vision"]),
                       text=TextConfig(vocab_size=32000, max_position_embeddings=2048, **m["text"]),
                       image_token_index=IMAGE_TOKEN, projector_type="mlp2x_gelu")


def prompts(cfg: LlavaConfig, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_img = cfg.num_image_tokens
    ids = np.concatenate([np.ones((batch, 1)), rng.integers(3, 31000, (batch, 20)), np.full((batch, n_img), IMAGE_TOKEN),
                          rng.integers(3, 31000, (batch, 10))], axis=1).astype(np.int64)
    mask = np.ones_like(ids)
    pixels = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    return ids, mask, pixels


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def roofline_seconds(model, batch: int, prompt_len: int, new: int, bw: float, peak: float) -> dict:
    cfg, t = model.config, model.config.text
    lm = model.language_model
    wsize = np.dtype(cfg.param_dtype).itemsize
    csize = np.dtype(cfg.dtype).itemsize
    layer_params = count(nnx_state(lm.layers))
    head_params = t.hidden_size * t.vocab_size + t.hidden_size
    vis_params = count(nnx_state(model.vision_tower)) + count(nnx_state(model.projector))
    L, D, KV, Dh = t.num_hidden_layers, t.hidden_size, t.num_key_value_heads, t.head_dim
    v = cfg.vision
    npatch = v.num_patches + 1
    prefill_flops = (2 * vis_params * batch * npatch + 4 * v.num_hidden_layers * batch * npatch ** 2 * v.hidden_size
                     + 2 * layer_params * batch * prompt_len + 2 * L * batch * prompt_len ** 2 * D
                     + 2 * head_params * batch)
    decode_s = 0.0
    for s in range(1, new):
        ctx = prompt_len + s
        nbytes = (layer_params + head_params) * wsize + 2 * L * batch * ctx * KV * Dh * csize
        flops = 2 * (layer_params + head_params) * batch + 4 * L * batch * ctx * D
        decode_s += max(nbytes / bw, flops / peak)
    return {"prefill_s": prefill_flops / peak, "decode_s": decode_s,
            "weight_bytes": (layer_params + head_params) * wsize}


def nnx_state(module):
    from flax import nnx
    return nnx.state(module, nnx.Param)


def run_jaxlava(model, ids, mask, pixels, new, seed):
    marks = []
    t0 = time.perf_counter()
    out = jaxlava.generate(model, ids, pixels, mask, max_new_tokens=new, temperature=1.0, eos_token_id=None,
                           pad_token_id=0, rng=jax.random.key(seed), chunk=new,
                           stream=lambda toks, done: marks.append(time.perf_counter() - t0))
    out.tokens.block_until_ready()
    assert int(np.asarray(out.lengths).min()) == new
    return marks  # [prefill done, decode done]


def run_hf(hf, ids, mask, pixels, new, seed):
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(pixels), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                          max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=2)
    assert out.shape[1] - ids.shape[1] == new


def bench_model(name, args, bw, peak, results, rows):
    import torch
    from transformers import LlavaForConditionalGeneration
    cfg = make_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        jaxlava.save_pretrained(jaxlava.LlavaModel(cfg, rngs=__import__("flax").nnx.Rngs(0)), tmp)
        model = jaxlava.from_pretrained(tmp, dtype=args.dtype)
        hf = LlavaForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32).eval()
    n_params = count(nnx_state(model))
    print(f"\n== {name}: {n_params / 1e6:.1f}M parameters, jaxlava {args.dtype}, transformers float32", flush=True)
    results[name] = {"parameters": n_params}
    for batch in args.batch_sizes:
        ids, mask, pixels = prompts(cfg, batch)
        t = time.perf_counter()
        run_jaxlava(model, ids, mask, pixels, args.new_tokens, 0)
        compile_s = time.perf_counter() - t
        marks = []
        jl = repeat(lambda: marks.append(run_jaxlava(model, ids, mask, pixels, args.new_tokens, 1)), args.repeats)
        run_hf(hf, ids, mask, pixels, 4, 0)  # warm-up
        hft = repeat(lambda: run_hf(hf, ids, mask, pixels, args.new_tokens, 1), args.repeats)
        ntok = batch * args.new_tokens
        roof = roofline_seconds(model, batch, ids.shape[1], args.new_tokens, bw, peak)
        jl_tok_s, hf_tok_s = ntok / jl["best_s"], ntok / hft["best_s"]
        best = min(marks, key=lambda m: m[-1])
        decode_s = best[-1] - best[0]
        r = {"jaxlava_tok_s": jl_tok_s, "transformers_tok_s": hf_tok_s, "ratio": jl_tok_s / hf_tok_s,
             "roofline_fraction": (roof["prefill_s"] + roof["decode_s"]) / jl["best_s"],
             "decode_roofline_fraction": roof["decode_s"] / decode_s,
             "jaxlava_prefill_s": best[0], "jaxlava_decode_s": decode_s,
             "jaxlava_ms_per_step": 1e3 * decode_s / (args.new_tokens - 1),
             "roofline_ms_per_step": 1e3 * roof["decode_s"] / (args.new_tokens - 1),
             "jaxlava_s": jl, "transformers_s": hft, "jaxlava_compile_s": compile_s,
             "weight_bytes_per_step": roof["weight_bytes"], "prompt_len": ids.shape[1]}
        results[name][str(batch)] = r
        rows.append({"model": name, "batch": batch, **{k: v for k, v in r.items() if not isinstance(v, dict)}})
        print(table(rows[-1:], list(rows[-1])), flush=True)


@dataclasses.dataclass(kw_only=True)
class DecodeArgs:
    """Which models and batch sizes to time, and how."""
    out: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """write the results as JSON here"""
    models: Annotated[str, tyro.conf.arg(help="comma-separated subset of: " + ", ".join(MODELS))] = "small,large"
    batches: str = "1,8,32"
    """comma-separated batch sizes"""
    new_tokens: int = 128
    """tokens sampled per prompt"""
    repeats: int = 2
    """timed runs per point (best is reported)"""
    dtype: str = "float32"
    """jaxlava parameter+compute dtype (float32 or bfloat16)"""

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self.batches.split(",")]


def main(argv=None):
    args = tyro.cli(DecodeArgs, args=argv, prog="bench/decode.py", description=__doc__)
    import torch
    torch.set_num_threads(os.cpu_count())
    bw = copy_bandwidth()
    peak = matmul_ceiling()
    print(f"copy bandwidth {bw / 1e9:.1f} GB/s (read+write), f32 matmul ceiling {peak / 1e9:.0f} GFLOP/s, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results = {"_machine": {**machine(), "copy_bandwidth_Bps": bw, "matmul_flops": peak, "dtype": args.dtype,
                            "new_tokens": args.new_tokens, "command": " ".join(sys.argv)}}
    rows = []
    for name in args.models.split(","):
        bench_model(name, args, bw, peak, results, rows)
    cols = ["model", "batch", "jaxlava_tok_s", "transformers_tok_s", "ratio", "roofline_fraction",
            "decode_roofline_fraction", "jaxlava_prefill_s", "jaxlava_ms_per_step", "roofline_ms_per_step"]
    print("\n" + table(rows, cols))
    results["_machine"]["load_avg_end"] = os.getloadavg()
    write_json(args.out, results)


if __name__ == "__main__":
    reexec_with_hugepages()
    main()
