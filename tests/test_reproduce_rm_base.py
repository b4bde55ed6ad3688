"""Where the reward models' base comes from in the shapes-world reproduction: the SFT model, the reading stage's
model (--rm-read-steps), or a model trained elsewhere (--rm-base)."""
import pytest

from jaxlava.reproduce import report
from jaxlava.reproduce.stages import STAGES


def test_reading_stage_gives_both_reward_models_their_base():
    """With rm_read_steps the seed trains the SFT model further on the world's `factcheck` split, and both reward
    models start from that model (so PPO's reward and value roles load it as their base); without, there is no
    such stage and both start from the SFT model."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import stage_configs
    from jaxlava.shapes.world import FACTCHECK_SPLITS
    from jaxlava.training.run_sft import held_out_split
    with_read = stage_configs(parse_config(["--recipe", "full", "--out", "o", "--rm-read-steps", "7"]), 1)
    read, sft = with_read["rm_read"], with_read["sft"]
    assert (read.split, read.steps, read.init, read.optim.lr) == ("factcheck", 7, f"{sft.out}/hf", 1e-3)
    assert (read.split, held_out_split(read.split)) == FACTCHECK_SPLITS
    assert with_read["rm_facts"].init == with_read["rm_nofacts"].init == f"{read.out}/hf"
    assert with_read["rlinit"].init == f"{sft.out}/hf"  # the policy's base is still the SFT model
    assert set(with_read) <= set(STAGES)  # run in STAGES' order: after the on-policy pairs, before the reward models
    assert STAGES.index(report.PAIRS) < STAGES.index("rm_read") < STAGES.index("rm_facts")
    without = stage_configs(parse_config(["--recipe", "full", "--out", "o"]), 1)
    assert "rm_read" not in without and without["rm_facts"].init == f"{without['sft'].out}/hf"
    given = stage_configs(parse_config(["--recipe", "full", "--out", "o", "--rm-base", "b/s{seed}/hf"]), 2)
    assert "rm_read" not in given and given["rm_facts"].init == given["rm_nofacts"].init == "b/s2/hf"
    assert given["rlinit"].init == f"{given['sft'].out}/hf"
    with pytest.raises(SystemExit, match="choose one"):
        parse_config(["--out", "o", "--rm-base", "b", "--rm-read-steps", "7"])


def test_reward_model_base_must_exist(tmp_path):
    """A --rm-base that is not a model folder stops the command before it writes anything, naming the folder."""
    from jaxlava.reproduce.recipe import parse_config
    from jaxlava.reproduce.stages import run
    cfg = parse_config(["--recipe", "full", "--out", str(tmp_path / "out"), "--seeds", "3", "--rm-base",
                        str(tmp_path / "m{seed}")])
    with pytest.raises(SystemExit, match=f"{tmp_path}/m3 is not an HF LLaVA folder"):
        run(cfg)
    assert not (tmp_path / "out").exists()
