"""Sizes shared by the input reader (:mod:`training.data.reader`) and the ``vae`` commands
(:mod:`pipeline.beam.defaults`), written once. Imports nothing: the commands read it at start-up
(``vae --help``), before numpy or pyarrow are loaded. (Not in ``training.data``, whose package
imports numpy and pyarrow.)"""

DEFAULT_SHARD_ROWS = 50_000  # rows per unit of work of an input (Parquet: whole row groups)

BUILTIN_DATA = ("digits", "mnist5k", "mnist5k-binary", "mnist", "fashion_mnist")  # training.data.builtin's names
