from setuptools import find_packages, setup

setup(
    name="linattn-models",
    version="0.1.0",
    description="Linear-attention language models (linear transformer, RetNet, GLA) for transformers, "
                "on one Triton kernel core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"linattn_models": ["tokenizer/*.json", "tokenizer/*.jinja", "configs/**/*.json"]},
    python_requires=">=3.10",
    # Ranges that both the CPU machines (torch 2.13, newest triton/transformers) and the GPU image
    # (torch 2.11, triton 3.6, transformers 5.17) satisfy.
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux'",
        "transformers>=5.17,<6",
        "accelerate>=1.10",
        "datasets>=3.0",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "einops>=0.8",
        "matplotlib>=3.8",  # the training script writes a loss-curve PNG by default
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6"],
        "bench": ["matplotlib>=3.8"],
        "tensorboard": ["tensorboard>=2.14"],  # --report-to tensorboard
    },
    entry_points={"console_scripts": [
        "linattn-train = linattn_models.cli.train:cli",
        "linattn-generate = linattn_models.cli.generate:cli",
    ]},
)
