"""Evaluation suite: POPE, MMHal-Bench, MMBench and LLaVA-Bench as LLaVA-RLHF ran them (docs/evaluation.md).

- `pope`, `mmhal`, `mmbench`, `llavabench`: the official parsing rules and formulas (pure functions), the
  benchmark files in their official formats, and `run(config)` for the CLIs in eval/.
- `runner`: model loading, batched generation into answers.jsonl with resume, results.json.
- `judge`: a client for OpenAI-compatible chat-completions judges (cache, retries, offline re-scoring).
- `prompts`: every judge prompt (jaxlava's paraphrases of the official ones).
- `shapes`: exact judges for the shapes world (POPE on its probes, object hallucination in descriptions, a
  0-6 rating from the ground truth), no API.
- `report`: several runs' results.json -> a markdown table and PNG charts.

The model, tokenizer and image stack are loaded only when answers must be generated, so re-scoring is quick.
"""
