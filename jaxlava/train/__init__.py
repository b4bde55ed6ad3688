"""Adapters for training roles: LoRA (`jaxlava.train.lora`) and PEFT-format IO (`jaxlava.train.peft_io`).

The optimizer, train step, checkpoints, metrics and loop live in jaxlava.optim, jaxlava.checkpoint,
jaxlava.metrics and jaxlava.trainer.
"""
