"""`--help` of every command line (train/*.py, data/*.py, bench/decode.py, python -m jaxlava.*): exit code 0 and
the key flags listed.  The commands run one after another in one subprocess (cli_fixtures.help_texts), once for
the module."""
import pytest

from cli_fixtures import help_texts

# command (after the python executable) -> what its help must show
COMMANDS = {
    "train/sft.py": ("--preset", "--init", "--data", "--out", "--steps", "--mesh", "--optim.lr"),
    "train/rm.py": ("--preset", "--init", "--data", "--extra-data", "--out", "--steps", "--mesh", "--lora.r"),
    "train/ppo.py": ("--preset", "--init", "--policy-adapter", "--reward-adapter", "--reward-base", "--data",
                     "--rollout-batch-size", "--step-batch-size", "--noptepochs", "--max-new-tokens", "--kl-coef",
                     "--terminal-at-eos", "--mask-pads", "--question-stop", "--mesh", "--optim.lr"),
    "train/reproduce.py": ("--recipe", "reading,reading-checklist,demo,full,demo-full,plain,tiny", "--seeds",
                           "--out", "--world", "--sft-steps", "--rm-steps", "--ppo-steps", "--ppo-lr",
                           "--judge-descriptions", "--mesh", "Acceptance checks"),
    "data/convert.py": ("llava", "vqav2", "aokvqa", "aokvqa-ppo", "flickr30k", "preference", "ppo-prompts"),
    "data/convert.py aokvqa": ("--input", "--out", "--image-dir", "--split", "--strict", "--tokenizer",
                               "--max-tokens", "--image-tokens", "--source", "--quiet", "--max-turns", "--variant"),
    "data/convert.py preference": ("--input", "--out", "--facts"),
    "data/convert.py flickr30k": ("--input", "--out", "--annotations-dir", "--per-image"),
    "data/shapes.py": ("--out", "--seed"),
    "-m jaxlava.plan": ("--preset", "llava-13b-336", "--stage", "--topology", "--cpu-devices", "--mesh", "--batch",
                        "--seq-len", "--grad-accum", "--param-dtype", "--compute-dtype", "--remat", "--no-remat",
                        "--hbm-gib", "--json"),
    "-m jaxlava.chat": ("QUESTION", "--model", "--image", "--vision-tower", "--template", "--max-new-tokens",
                        "--temperature", "--top-p", "--top-k", "--seed", "--dtype", "--chunk"),
    "-m jaxlava.export": ("--run", "--out", "--merge"),
    "bench/decode.py": ("--out", "--models", "--batches", "--new-tokens", "--repeats", "--dtype"),
    "bench/train_step.py": ("--out", "--cases", "--steps", "--no-torch"),
    "bench/ppo_step.py": ("--out", "--work", "--steps"),
    "eval/rm_audit.py": ("--reward-adapters", "--init", "--policy-adapter", "--data", "--split", "--prompts",
                         "--samples", "--temperature", "--out", "hallucination pair"),
    "eval/rm_twins.py": ("--run", "--data", "--split", "--batch-size", "--out", "binding"),
    "data/onpolicy_pairs.py": ("--init", "--policy-adapter", "--data", "--prompts", "--samples", "--tradeoff",
                               "--out", "annotators' rule", "--extra-data"),
}


@pytest.fixture(scope="module")
def helps():
    return help_texts(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help(helps, command):
    got = helps[command]
    assert got["returncode"] == 0, got["stderr"][-3000:]
    missing = [flag for flag in COMMANDS[command] if flag not in got["stdout"]]
    assert not missing, f"{command} --help lacks {missing}:\n{got['stdout']}"
