"""The input contract every job reads images through: training, scoring, generation inputs and
evaluation. ``plan_input`` cuts an input into shards of Arrow record batches, ``validate_batch``
turns a batch into float32 images and a reason for every row it rejects, and ``load`` does both for
a whole data set in one process."""

from training.data.builtin import BUILTIN, FASHION_NAMES, load_builtin, load_digits, load_keras_dataset, load_mnist5k
from training.data.images import (
    IMAGE_SUFFIXES,
    UNLABELLED,
    DataError,
    ImageData,
    ImageProblem,
    decode_image,
    parquet_files,
)
from training.data.load import REJECTS_SCHEMA, ReadResult, load, read_images
from training.data.splits import (
    HOLDOUT_FRACTION,
    MIN_TRAINING_ROWS,
    Split,
    TrainingSplit,
    fingerprint,
    grey_levels,
    in_holdout,
    levels_reason,
    split,
    training_split,
    typical_brightest,
)

__all__ = [
    "BUILTIN",
    "FASHION_NAMES",
    "HOLDOUT_FRACTION",
    "IMAGE_SUFFIXES",
    "MIN_TRAINING_ROWS",
    "DataError",
    "ImageData",
    "ImageProblem",
    "Split",
    "TrainingSplit",
    "UNLABELLED",
    "decode_image",
    "REJECTS_SCHEMA",
    "ReadResult",
    "fingerprint",
    "grey_levels",
    "in_holdout",
    "levels_reason",
    "load",
    "load_builtin",
    "load_digits",
    "load_keras_dataset",
    "load_mnist5k",
    "read_images",
    "parquet_files",
    "split",
    "training_split",
    "typical_brightest",
]
