"""Training machinery shared by every stage.

- `step.py`: `TrainState`, `StepOutput` and the generic jitted step (accumulation, AdamW update, NaN guard);
- `optim.py`: optimiser and schedules;
- `loop.py`: `fit`, the loop (resume, checkpoints, metrics, hooks, the NaN guard's host side);
- `checkpoint.py`, `metrics.py`: orbax checkpoints; metrics.jsonl, TensorBoard and metrics.png;
- `runs.py`, `cli.py`: run setup shared by the stages (data, model, mesh, batch feeding) and tyro parsing;
- `run_sft.py`, `run_rm.py`, `run_ppo.py`: each stage's run (config, run presets, `run(cfg)`).
"""
