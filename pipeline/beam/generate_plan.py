"""What ``vae generate`` will sample, decided on the driver: which label (and, for ``posterior``,
which source image; for ``interpolate``, which latent) each sample gets, cut into shards of whole
blocks of :data:`SAMPLES_PER_BLOCK`.

Each block draws from its own random stream (:func:`scoring.sampling.stream_seed`), so a sample
depends only on the seed, the request and its index, never on the shards or the workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.beam.defaults import DEFAULT_PER_LABEL, DEFAULT_PRIOR_SAMPLES, METHODS, SAMPLES_PER_SHARD
from pipeline.outputs.synthetic import NO_LABEL

if TYPE_CHECKING:
    from training.data import ImageData
    from training.data.validate import ModelSpec
    from training.registry import ModelRef

SAMPLES_PER_BLOCK = 256  # the unit of randomness and of decoding: one stream, one batch


class GenerateError(ValueError):
    """A request that cannot be served (e.g. labels for a plain model), with what to do instead."""


@dataclass(frozen=True)
class Plan:
    """One row per sample, in output order (grouped by label)."""

    labels: np.ndarray  # int64, NO_LABEL where there is none
    images: np.ndarray | None = None  # posterior: the source images
    source_ids: np.ndarray | None = None  # posterior: their example ids; interpolate: "FROM->TO"
    class_names: list[str] = field(default_factory=list)
    latents: np.ndarray | None = None  # interpolate: the latents to decode, given (nothing is drawn)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Shard:
    """A unit of work: consecutive whole blocks of the plan, with the rows they need."""

    index: int
    total: int
    start: int  # index of the first sample; a multiple of SAMPLES_PER_BLOCK
    labels: np.ndarray
    images: np.ndarray | None = None
    source_ids: np.ndarray | None = None
    latents: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def parse_labels(values: Sequence[int | str] | str | None, class_names: Sequence[str]) -> list[int] | None:
    """Label indices for ``"0,3,7"`` or a list of indices or class names; None means all."""
    if values is None:
        return None
    tokens = [t.strip() for t in values.split(",")] if isinstance(values, str) else [str(v) for v in values]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise GenerateError("--labels is empty; give label indices or class names separated by commas, e.g. 0,3,7")
    names = list(class_names)
    indices: list[int] = []
    for token in tokens:
        if token in names:
            index = names.index(token)
        elif token.lstrip("-").isdigit() and 0 <= int(token) < len(names):
            index = int(token)
        else:
            raise GenerateError(
                f"unknown label {token!r}; this model's labels are {', '.join(names)} (indices 0-{len(names) - 1})"
            )
        if index not in indices:
            indices.append(index)
    return indices


def _spread(total: int, labels: list[int]) -> np.ndarray:
    """``total`` labels spread as evenly as possible over ``labels`` (the first ones get the remainder)."""
    k = len(labels)
    counts = [total // k + (1 if i < total % k else 0) for i in range(k)]
    return np.repeat(np.asarray(labels, dtype=np.int64), counts)


def _plain_model_error(model: ModelRef, what: str) -> GenerateError:
    return GenerateError(
        f"{model.name} v{model.version} is a plain (unconditional) VAE, so it cannot {what}. "
        "Use --method prior (or posterior) with this model, or train a label-conditioned one with "
        f"`vae train --conditional --model-name {model.name}-cond` and generate from that."
    )


def plan_samples(
    model: ModelRef,
    spec: ModelSpec,
    method: str,
    *,
    n: int | None = None,
    per_label: int | None = None,
    labels: Sequence[int | str] | str | None = None,
    data: ImageData | None = None,
) -> Plan:
    """Which label (and source image) each sample of ``model`` (whose inputs ``spec`` describes) gets.
    ``data``: the images to encode for ``posterior``."""
    if method not in METHODS:
        raise GenerateError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if n is not None and per_label is not None:
        raise GenerateError("give --n (samples in all) or --per-label (samples per label), not both")
    for name, value in (("--n", n), ("--per-label", per_label)):
        if value is not None and value < 1:
            raise GenerateError(f"{name} must be at least 1, got {value}")
    if method == "interpolate":
        raise GenerateError("--method interpolate is planned from the loaded model: use plan_interpolation")
    if method == "posterior":
        return _plan_posterior(model, spec, n=n, per_label=per_label, labels=labels, data=data)
    if data is not None:
        raise GenerateError(f"--input is only used by --method posterior, not {method}")
    if not spec.num_classes:
        if method == "conditional":
            raise _plain_model_error(model, "generate images for a requested label")
        if labels is not None or per_label is not None:
            raise _plain_model_error(model, "take --labels or --per-label")
        return Plan(np.full(n or DEFAULT_PRIOR_SAMPLES, NO_LABEL, dtype=np.int64))
    class_names = list(spec.class_names)
    chosen = parse_labels(labels, class_names) or list(range(spec.num_classes))
    if per_label is not None:
        planned = np.repeat(np.asarray(chosen, dtype=np.int64), per_label)
    elif n is not None:
        planned = _spread(n, chosen)
    else:
        planned = (
            _spread(DEFAULT_PRIOR_SAMPLES, chosen)
            if method == "prior"
            else np.repeat(np.asarray(chosen, np.int64), DEFAULT_PER_LABEL)
        )
    return Plan(planned, class_names=class_names)


def indices_only(data_classes: list[str] | None, model_classes: list[str]) -> bool:
    """True when the data's labels are bare class indices ("0".."K-1") that the model does not
    have as names (a model of named classes such as Fashion-MNIST's)."""
    names = list(data_classes or [])
    return names == [str(i) for i in range(len(names))] and not set(names) <= set(model_classes)


def _source_labels(model: ModelRef, spec: ModelSpec, data: ImageData) -> tuple[np.ndarray, list[str]]:
    """The model's label index of each image of ``data`` (NO_LABEL without labels) and the class
    names they index; a conditional model needs labels it knows."""
    who = f"{model.name} v{model.version}"
    model_classes = list(spec.class_names)
    if data.labels is None:
        if spec.num_classes:
            raise GenerateError(
                f"{data.source}: has no labels, but {who} is a conditional VAE and encodes each image with its "
                "label; give labelled images (a 'label' column or sub-folders)"
            )
        source_labels = np.full(len(data), NO_LABEL, dtype=np.int64)
        class_names: list[str] = []
    elif spec.num_classes and indices_only(data.class_names, model_classes):
        # whole-number labels that are not the model's class names: class indices, as vae score reads them
        if int(data.labels.max()) >= spec.num_classes:
            raise GenerateError(
                f"{data.source}: label {int(data.labels.max())} is not a class index of {model.name} "
                f"({spec.num_classes} classes: {', '.join(model_classes)})"
            )
        source_labels = data.labels.astype(np.int64)
        class_names = model_classes
    elif spec.num_classes:  # the model's label indices, matched by class name
        missing = sorted({data.class_names[i] for i in np.unique(data.labels)} - set(model_classes))
        if missing:
            raise GenerateError(
                f"{data.source}: labels {', '.join(missing)} are not among {model.name}'s classes "
                f"({', '.join(model_classes)})"
            )
        to_model = np.array([model_classes.index(name) for name in data.class_names], dtype=np.int64)
        source_labels = to_model[data.labels]
        class_names = model_classes
    else:
        source_labels = data.labels.astype(np.int64)
        class_names = list(data.class_names)

    return source_labels, class_names


def _plan_posterior(model: ModelRef, spec: ModelSpec, *, n, per_label, labels, data) -> Plan:
    if data is None:
        raise GenerateError("--method posterior needs real images to encode: give --input PATH or --input digits")
    who = f"{model.name} v{model.version}"
    if tuple(data.image_shape) != tuple(spec.image_shape):
        raise GenerateError(
            f"{data.source}: images are {'x'.join(map(str, data.image_shape))} but {who} takes {spec.shape_text}"
        )
    if data.labels is None and (labels is not None or per_label is not None) and not spec.num_classes:
        raise GenerateError(f"{data.source}: has no labels, so --labels and --per-label cannot be used")
    source_labels, class_names = _source_labels(model, spec, data)

    chosen = parse_labels(labels, class_names) if class_names else None
    pool = np.arange(len(data))
    if chosen is not None:
        pool = pool[np.isin(source_labels[pool], chosen)]
        if len(pool) == 0:
            raise GenerateError(f"{data.source}: no images have the labels {labels}")
    if per_label is not None:
        wanted = chosen if chosen is not None else sorted(set(source_labels[pool].tolist()))
        parts = []
        for label in wanted:
            members = pool[source_labels[pool] == label]
            if len(members) == 0:
                raise GenerateError(f"{data.source}: no images with label {class_names[label]!r} to encode")
            parts.append(members[np.arange(per_label) % len(members)])
        sources = np.concatenate(parts)
    elif n is not None:
        sources = pool[np.arange(n) % len(pool)]  # more samples than images: several draws per image
    else:
        sources = pool
    sources = sources[np.argsort(source_labels[sources], kind="stable")]
    return Plan(
        labels=source_labels[sources],
        images=np.ascontiguousarray(data.images[sources], dtype=np.float32),
        source_ids=np.asarray(data.example_ids[sources]).astype(str),
        class_names=class_names,
    )


def plan_interpolation(
    model: ModelRef, spec: ModelSpec, vae, data: ImageData, from_id: str, to_id: str, steps: int
) -> Plan:
    """``steps`` given latents on the straight line between the posterior means of the images
    ``from_id`` and ``to_id`` of ``data`` (:func:`scoring.latent_space.interpolation_latents`, with
    ``vae``, the loaded ``model``), both ends included. A conditional model encodes each image with its
    label and decodes every step with the first's; ``source_example_id`` is ``FROM->TO``."""
    from scoring.latent_space import interpolation_latents

    if steps < 2:
        raise GenerateError(f"--steps must be at least 2 (both ends), got {steps}")
    who = f"{model.name} v{model.version}"
    if tuple(data.image_shape) != tuple(spec.image_shape):
        raise GenerateError(
            f"{data.source}: images are {'x'.join(map(str, data.image_shape))} but {who} takes {spec.shape_text}"
        )
    ids = np.asarray(data.example_ids).astype(str)
    rows = []
    for flag, wanted in (("--from", from_id), ("--to", to_id)):
        found = np.flatnonzero(ids == str(wanted))
        if len(found) == 0:
            raise GenerateError(f"{flag} {wanted}: no image with that example_id in {data.source}")
        rows.append(int(found[0]))
    source_labels, class_names = _source_labels(model, spec, data)
    label_a, label_b = (int(source_labels[r]) for r in rows)
    conditional = bool(spec.num_classes)
    latents = interpolation_latents(
        vae,
        np.asarray(data.images[rows[0]], np.float32),
        np.asarray(data.images[rows[1]], np.float32),
        steps,
        label_a=label_a if conditional else None,
        label_b=label_b if conditional else None,
    )
    return Plan(
        labels=np.full(steps, label_a if conditional else NO_LABEL, dtype=np.int64),
        source_ids=np.full(steps, f"{from_id}->{to_id}", dtype=object).astype(str),
        class_names=class_names if conditional else [],
        latents=latents,
    )


def make_shards(plan: Plan, shards: int | None = None) -> list[Shard]:
    """Cuts the plan into ``shards`` pieces of whole blocks (default: one per SAMPLES_PER_SHARD samples)."""
    blocks = math.ceil(len(plan) / SAMPLES_PER_BLOCK)
    wanted = shards if shards is not None else math.ceil(len(plan) / SAMPLES_PER_SHARD)
    count = max(1, min(wanted, blocks))
    out = []
    for index, part in enumerate(np.array_split(np.arange(blocks), count)):
        start, stop = int(part[0]) * SAMPLES_PER_BLOCK, min(len(plan), (int(part[-1]) + 1) * SAMPLES_PER_BLOCK)
        out.append(
            Shard(
                index=index,
                total=count,
                start=start,
                labels=plan.labels[start:stop],
                images=None if plan.images is None else plan.images[start:stop],
                source_ids=None if plan.source_ids is None else plan.source_ids[start:stop],
                latents=None if plan.latents is None else plan.latents[start:stop],
            )
        )
    return out
