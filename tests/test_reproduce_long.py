"""The paper's claim on the shapes world, one seed from scratch (issue: the shapes reproduction).

Opt-in (`make test-long`, marker `long`): `python train/reproduce.py --recipe reading --seeds 0` (the default
recipe) takes 3 to 5 hours on 2 cores.  It builds the default reproduction world, trains the grounding stage,
SFT in three phases, RL-init, the on-policy pairs, the reading stage, the reward models with and without facts,
audits both on the RL-init policy's samples, runs PPO against each three times, judges the three systems exactly,
and checks the three inequalities of the claim on that seed (docs/results.md: seed 1 of this recipe misses the
third; seed 0 of it has not finished yet):
  * Fact-RLHF lowers the object-hallucination rate (CHAIR-i) by at least 30 % relative to SFT;
  * its object recall falls by at most 5 % relative to SFT;
  * its CHAIR-i is below that of RLHF whose reward model never saw the facts.
The checks are `jaxlava.reproduce.report.acceptance`, the same code that writes results.md; this test only
refuses to pass when any of them fails, and names the numbers.

Set JAXLAVA_LONG_DIR to keep the run in that folder: a rerun then resumes it (finished stages are skipped, a stage
cut short resumes from its checkpoints) or refuses a folder made with other settings.  JAXLAVA_LONG_RECIPE and
JAXLAVA_LONG_SEED run another recipe or seed the same way (`full`, the default before docs/decisions.md 67: 45 to
100 minutes on 2 cores).
"""
import json
import os
import subprocess
import sys

import pytest

from cli_fixtures import ROOT, cli_env

pytestmark = pytest.mark.long

SEED = int(os.environ.get("JAXLAVA_LONG_SEED", "0"))
RECIPE = os.environ.get("JAXLAVA_LONG_RECIPE", "reading")


def test_one_seed_of_a_recipe_meets_the_claim(tmp_path):
    out = os.environ.get("JAXLAVA_LONG_DIR") or str(tmp_path / "reproduce")
    cmd = [sys.executable, os.path.join(ROOT, "train", "reproduce.py"), "--recipe", RECIPE, "--seeds", str(SEED),
           "--out", out]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=cli_env(), check=True)
    with open(os.path.join(out, "results.json")) as f:
        checks = json.load(f)["checks"]["per_seed"][str(SEED)]
    assert [c["check"] for c in checks] == ["chair_i_drop", "recall_kept", "facts_beat_no_facts"]
    failed = [f"{c['text']}: {'missing' if c['value'] is None else format(c['value'], '+.3f')}"
              for c in checks if not c["pass"]]
    assert not failed, f"seed {SEED} of the {RECIPE} recipe misses the claim ({out}/results.md): " + "; ".join(failed)
