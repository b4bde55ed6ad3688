"""`train/ppo.py --prompt-types`: PPO trains on the prompts of the named caption types only."""
import pytest

from jaxlava.data.storage import SubsetSource
from jaxlava.training.cli import parse
from jaxlava.training.run_ppo import PPOConfig, RUN_PRESETS, select_prompt_types


def records():
    return [{"id": f"p{i}", "caption_type": c} for i, c in enumerate([1, 2, 6, 1, 5, 7, 3, 1])]


def test_types_select_their_caption_types_in_order(capsys):
    src = records()
    assert select_prompt_types(src, (), "d") is src
    general = select_prompt_types(src, ("general",), "d")
    assert [general[i]["id"] for i in range(len(general))] == ["p0", "p3", "p7"]
    assert "PPO trains on 3 of the 8 prompts in d" in capsys.readouterr().out
    mixed = select_prompt_types(src, ("mc", "yesno"), "d")
    assert [mixed[i]["caption_type"] for i in range(len(mixed))] == [2, 6, 5, 7, 3]
    with pytest.raises(IndexError, match="record 5 of 5"):
        mixed[5]


def test_no_prompt_of_the_types_is_an_error_naming_the_data():
    with pytest.raises(ValueError, match="--prompt-types yesno: none of the 2 PPO prompts in worlds/x"):
        select_prompt_types([{"caption_type": 1}, {"caption_type": 3}], ("yesno",), "worlds/x")
    with pytest.raises(ValueError, match="no records selected"):
        SubsetSource([], [])


def test_the_flag_parses_and_defaults_to_every_type():
    assert parse(PPOConfig, [], default=RUN_PRESETS["shapes"]).prompt_types == ()
    assert parse(PPOConfig, ["--prompt-types", "general", "yesno"],
                 default=RUN_PRESETS["shapes"]).prompt_types == ("general", "yesno")
    with pytest.raises(SystemExit):
        parse(PPOConfig, ["--prompt-types", "chat"], default=RUN_PRESETS["shapes"])
