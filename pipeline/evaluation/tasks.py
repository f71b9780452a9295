"""The evaluation's tasks: which images every detector is fitted on and which it scores.

Protocol cells (one summary row each; the number in a contaminated cell is the percentage):

- ``held-out``: fit on the train split without class c, score the test split; anomalies = c.
  One task per class.
- ``contaminated-clustered-{1,3,10}``: the unsupervised setting of ODDS ``optdigits``: every class
  but c, plus a seeded sample of c making up 1, 3 or 10% of the whole (capped at the images of c
  there are); fit on all of it, score all of it; anomalies = c. One task per planted class, and
  the planted classes of seed s are :func:`planted_classes`: ``k`` evenly spaced classes offset by
  s (k = 3 of 10: 0, 3, 7 for seed 0; 1, 4, 8 for seed 1; 2, 5, 9 for seed 2), so the cell is not
  about one digit. The samples are nested: the 1% zeros of a seed are among its 3% zeros.
- ``contaminated-scattered-{1,3,10}``: every class as it is, with a seeded 1, 3 or 10% of the
  images replaced by broken versions of themselves, the corruptions of
  :mod:`pipeline.evaluation.corruptions` mixed (each kind on an equal share); fit on all, score
  all; anomalies = the broken images. They are scattered over every class and do not cluster the
  way a planted class does, the other shape of contamination a user meets: a feed with some
  broken images in it. (Images of another data set would be a third shape; the broken images are
  closer to what goes wrong in this product's pipelines and need no download.) One task.
- ``one-class``: fit on the train split of class c only, score the test split; anomalies = the
  other classes. One task per class.
- ``corrupted``: the semi-supervised setting: fit on the clean train split; for each corruption
  kind, score the test split with a seeded 10% of it replaced by broken versions (the same images
  for every kind). One fit per seed; one task (AUROC) per kind, so a table shows the worst kind.

Every random step is seeded by the run's seed, so the tasks are a function of (data, seed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.evaluation import corruptions
from training import data as data_lib

CONTAMINATION = 0.03
RATES = (1, 3, 10)  # percent, the contaminated cells
CLUSTERED = tuple(f"contaminated-clustered-{r}" for r in RATES)
SCATTERED = tuple(f"contaminated-scattered-{r}" for r in RATES)
PROTOCOLS = ("held-out", *CLUSTERED, *SCATTERED, "one-class", "corrupted")
#: names the command line accepts for several cells
SHORTHANDS = {
    "contaminated": CLUSTERED + SCATTERED,
    "contaminated-clustered": CLUSTERED,
    "contaminated-scattered": SCATTERED,
}
PLANTED_CLASSES = 3  # clustered cells: planted classes per seed
UNSUPERVISED_VALIDATION = 256  # images of an unsupervised fit's validation sample (only logged)
CORRUPTED_SHARE = 0.10


@dataclass(frozen=True)
class Task:
    """One fit: the images every detector is fitted on, and the images it is scored on.

    ``parts``, when given, are sub-tasks scored from the same fit: (name, rows of ``test``) each,
    one result row per part (the corruption kinds); otherwise the task is one part, ``target``."""

    protocol: str
    target: str  # the class that defines the task (left out, planted, or the only one), or a label
    fit: data_lib.ImageData
    validation: data_lib.ImageData  # early stopping and the VAE's threshold only; never scored
    test: data_lib.ImageData
    is_anomaly: np.ndarray  # bool, one per test image
    parts: tuple[tuple[str, np.ndarray], ...] = ()

    @property
    def subtasks(self) -> list[tuple[str, np.ndarray]]:
        """(name, rows of ``test``) per scored part: ``parts``, or the whole test set as ``target``."""
        return list(self.parts) if self.parts else [(self.target, np.arange(len(self.test)))]

    def part_counts(self, rows: np.ndarray) -> dict[str, int]:
        anomalous = self.is_anomaly[rows]
        return {"n_fit": len(self.fit), "n_normal": int((~anomalous).sum()), "n_anomalous": int(anomalous.sum())}

    @property
    def counts(self) -> dict[str, int]:
        return self.part_counts(np.arange(len(self.test)))

    @property
    def unsupervised(self) -> bool:
        """True where the scored images are the fit images (the contaminated cells)."""
        return self.fit is self.test


def _labels(data: data_lib.ImageData) -> np.ndarray:
    if data.labels is None or not data.class_names:
        raise data_lib.DataError(f"{data.source}: the evaluation needs labelled images (classes define anomalies)")
    return data.labels


def _classes(labels: np.ndarray, max_classes: int | None, rotate: int | None = None, seed: int = 0) -> np.ndarray:
    """The classes of held-out and one-class tasks: ``rotate`` of them chosen by
    :func:`planted_classes` for ``seed`` when given, else the first ``max_classes`` (all if None)."""
    classes = np.unique(labels)
    if rotate:
        return classes[planted_classes(len(classes), rotate, seed)]
    return classes if max_classes is None else classes[:max_classes]


def planted_classes(n_classes: int, k: int, seed: int) -> list[int]:
    """The ``k`` classes planted in the clustered cells for ``seed``: evenly spaced, offset by the
    seed (k = 3 of 10: 0, 3, 7, then 1, 4, 8, then 2, 5, 9, ...), sorted."""
    k = max(1, min(k, n_classes))
    return sorted({(seed + round(i * n_classes / k)) % n_classes for i in range(k)})


def contamination_of(protocol: str) -> float:
    """0.03 for ``contaminated-clustered-3``, and so on."""
    return int(protocol.rsplit("-", 1)[1]) / 100.0


def _unsupervised(
    protocol: str, target: str, everything: data_lib.ImageData, is_anomaly: np.ndarray, seed: int
) -> Task:
    """Fit and score ``everything``; the validation images, which only the VAE's epoch log reads
    here (no early stopping: :func:`pipeline.evaluation.task_scores.vae_config`), are a seeded
    sample of :data:`UNSUPERVISED_VALIDATION` of them, not all (a third of each epoch's time)."""
    sample = np.sort(np.random.default_rng(seed).permutation(len(everything))[:UNSUPERVISED_VALIDATION])
    return Task(protocol, target, everything, everything.subset(sample), everything, is_anomaly)


def held_out_tasks(
    data: data_lib.ImageData, seed: int = 0, max_classes: int | None = None, rotate: int | None = None
) -> list[Task]:
    """Per class c (the first ``max_classes`` only, or ``rotate`` classes rotating with the seed,
    if given): fit on the train split without c, score the whole test split; anomalies = c."""
    return _per_class_tasks("held-out", data, seed, max_classes, rotate, normal_is_c=False)


def _per_class_tasks(
    protocol: str,
    data: data_lib.ImageData,
    seed: int,
    max_classes: int | None,
    rotate: int | None,
    normal_is_c: bool,
) -> list[Task]:
    """A task per class c: fit on the train split's images of c (``normal_is_c``) or of every other
    class, score the whole test split; anomalies are the rest."""
    labels = _labels(data)
    parts = data_lib.split(data, seed=seed)

    def normal(part: data_lib.ImageData, c: int) -> np.ndarray:
        return (part.labels == c) == normal_is_c

    return [
        Task(
            protocol=protocol,
            target=data.class_names[c],
            fit=parts.train.subset(np.flatnonzero(normal(parts.train, c))),
            validation=parts.validation.subset(np.flatnonzero(normal(parts.validation, c))),
            test=parts.test,
            is_anomaly=~normal(parts.test, c),
        )
        for c in _classes(labels, max_classes, rotate, seed)
    ]


def contaminated_task(
    data: data_lib.ImageData, seed: int = 0, anomaly_class: int = 0, contamination: float = CONTAMINATION
) -> Task:
    """Every class but ``anomaly_class``, plus a seeded sample of it making up ``contamination``
    of the whole (at most all of it); fit and score on the same images (unsupervised). The sample
    is the start of one seeded permutation, so a lower rate's sample is part of a higher one's."""
    labels = _labels(data)
    normal = np.flatnonzero(labels != anomaly_class)
    candidates = np.flatnonzero(labels == anomaly_class)
    n_anomalous = min(len(candidates), max(1, round(contamination * len(normal) / (1.0 - contamination))))
    planted = np.random.default_rng(seed).permutation(candidates)[:n_anomalous]
    everything = data.subset(np.sort(np.concatenate([normal, planted])))
    protocol = f"contaminated-clustered-{contamination * 100:g}"
    is_anomaly = everything.labels == anomaly_class
    return _unsupervised(protocol, data.class_names[anomaly_class], everything, is_anomaly, seed)


def scattered_task(
    data: data_lib.ImageData,
    seed: int = 0,
    contamination: float = CONTAMINATION,
    kinds: Sequence[str] = corruptions.KINDS,
) -> Task:
    """Every image, with a seeded ``contamination`` of them (the start of one seeded permutation,
    so nested over rates) replaced by broken versions of themselves, ``kinds`` mixed; fit and
    score on the same images (unsupervised); anomalies = the broken ones."""
    n = len(data)
    rows = np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(contamination * n))])
    broken, _ = corruptions.corrupt_mixed(
        np.asarray(data.images[rows]), list(kinds), seed=seed, levels=data_lib.grey_levels(data.images)
    )
    images = np.array(data.images)
    images[rows] = broken
    everything = replace(data, images=images)
    is_anomaly = np.zeros(n, bool)
    is_anomaly[rows] = True
    return _unsupervised(f"contaminated-scattered-{contamination * 100:g}", "mixed", everything, is_anomaly, seed)


def corrupted_task(
    data: data_lib.ImageData, seed: int = 0, kinds: Sequence[str] = corruptions.KINDS, share: float = CORRUPTED_SHARE
) -> Task:
    """Fit on the clean train split; per kind, the test split with a seeded ``share`` of it (the
    same images for every kind) replaced by their broken versions. The test set holds the clean
    split then each kind's broken images; a part is the clean images not replaced plus that
    kind's broken ones."""
    kinds = corruptions.check_kinds(kinds)
    split = data_lib.split(data, seed=seed)
    clean = split.test
    n = len(clean)
    replaced = np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(share * n))])
    kept = np.setdiff1d(np.arange(n), replaced)
    levels = data_lib.grey_levels(data.images)
    source = np.asarray(clean.images[replaced])
    images, ids, parts = [np.asarray(clean.images)], [clean.example_ids], []
    for j, kind in enumerate(kinds):
        start = n + j * len(replaced)
        images.append(corruptions.corrupt(source, kind, seed=seed * 1000 + j, levels=levels))
        ids.append(np.char.add(clean.example_ids[replaced].astype(str), f"#{kind}"))
        parts.append((kind, np.concatenate([kept, np.arange(start, start + len(replaced))])))
    labels = None if clean.labels is None else np.concatenate([clean.labels] + [clean.labels[replaced]] * len(kinds))
    test = data_lib.ImageData(np.concatenate(images), labels, np.concatenate(ids), clean.class_names, clean.source)
    is_anomaly = np.arange(len(test)) >= n
    return Task("corrupted", f"{len(kinds)} kinds", split.train, split.validation, test, is_anomaly, tuple(parts))


def one_class_tasks(
    data: data_lib.ImageData, seed: int = 0, max_classes: int | None = None, rotate: int | None = None
) -> list[Task]:
    """Per class c (the first ``max_classes`` only, or ``rotate`` classes rotating with the seed,
    if given): fit on the train split of c only, score the whole test split; anomalies = not c."""
    return _per_class_tasks("one-class", data, seed, max_classes, rotate, normal_is_c=True)


def check_protocols(protocols: Iterable[str]) -> list[str]:
    """The protocol cells in table order, shorthands (``contaminated``, ...) expanded; raises
    ``ValueError`` on an unknown name."""
    wanted: list[str] = []
    for name in protocols:
        wanted += SHORTHANDS.get(name, (name,))
    unknown = [p for p in wanted if p not in PROTOCOLS]
    if unknown:
        choices = ", ".join([*PROTOCOLS, *SHORTHANDS])
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; choose from {choices}")
    return [p for p in PROTOCOLS if p in wanted]


def build_tasks(
    data: data_lib.ImageData,
    protocols: Sequence[str] = PROTOCOLS,
    seed: int = 0,
    max_classes: int | None = None,
    planted: int = PLANTED_CLASSES,
    kinds: Sequence[str] = corruptions.KINDS,
    rotate: int | None = None,
) -> list[Task]:
    """The tasks of ``protocols`` on ``data`` for one seed, in :data:`PROTOCOLS` order whatever
    order they were asked in. ``max_classes``: held-out and one-class for the first classes only;
    ``rotate``: for that many classes chosen like the planted ones (:func:`planted_classes`);
    ``planted``: planted classes per clustered cell; ``kinds``: the corruptions."""
    labels = _labels(data)
    tasks: list[Task] = []
    for protocol in check_protocols(protocols):
        if protocol == "held-out":
            tasks += held_out_tasks(data, seed, max_classes, rotate)
        elif protocol in CLUSTERED:
            rate = contamination_of(protocol)
            for c in planted_classes(len(np.unique(labels)), planted, seed):
                tasks.append(contaminated_task(data, seed, int(np.unique(labels)[c]), rate))
        elif protocol in SCATTERED:
            tasks.append(scattered_task(data, seed, contamination_of(protocol), kinds))
        elif protocol == "one-class":
            tasks += one_class_tasks(data, seed, max_classes, rotate)
        else:
            tasks.append(corrupted_task(data, seed, kinds))
    return tasks


def count_tasks(
    data: data_lib.ImageData,
    protocols: Sequence[str] = PROTOCOLS,
    max_classes: int | None = None,
    planted: int = PLANTED_CLASSES,
    rotate: int | None = None,
) -> int:
    """How many tasks (fits) :func:`build_tasks` makes per seed, without building them."""
    n_classes = len(np.unique(_labels(data)))
    classes = len(_classes(_labels(data), max_classes, rotate))
    per = {"held-out": classes, "one-class": classes, "corrupted": 1}
    per |= {p: max(1, min(planted, n_classes)) for p in CLUSTERED} | dict.fromkeys(SCATTERED, 1)
    return sum(per[p] for p in check_protocols(protocols))
