"""Packaging for jaxlava (the user asked for a setup.py rather than pyproject-only)."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "einops>=0.8,<0.9",
    "transformers>=5.23,<6",
    "tokenizers>=0.23,<0.24",
    "tensorflow-datasets>=4.9.10,<4.10",
    "array-record>=0.8,<0.9",
    "importlib_resources",  # tensorflow-datasets needs it for builders defined in a package
    "safetensors>=0.8,<0.9",
    "pillow>=11",
    "numpy>=2.0,<3",
    "tqdm>=4.66",
    "tensorboardX>=2.6,<3",
    "tyro>=1.0,<2",
    "absl-py",
    "matplotlib>=3.9",
    "httpx>=0.27,<1",  # the evaluation judge client (jaxlava/eval/judge.py)
]

EXTRAS = {
    # torch is test-only; the pin matters (the CPU wheel is on the build machine).
    "test": [
        "pytest>=8",
        "pytest-timeout",
        "pytest-xdist",  # `make test` runs the suite on 2 workers (most of a test's time is single-threaded compiling)
        "hypothesis>=6",
        "torch==2.13.0",
        "peft>=0.17",
        "sentencepiece",
        "import-linter>=2.1,<3",  # the layer contract in .importlinter (tests/test_layers.py)
    ],
    "tpu": ["libtpu"],
}

setup(
    name="jaxlava",
    version="0.1.0",
    description="LLaVA-RLHF (SFT+, fact-augmented reward model, PPO) in JAX / Flax NNX",
    packages=find_packages(include=["jaxlava", "jaxlava.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
