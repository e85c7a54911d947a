"""A task is a value: a dataset, a model family, a subsample and a seed.

:class:`Task` names a task; :func:`rlhpo.tasks.load_task` turns it into :class:`TaskData`, the
tensors a trainer needs (train / validation / test), carved reproducibly from the dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

MODALITIES = ("image", "text", "tabular")
FAMILIES_BY_MODALITY = {
    "image": ("cnn", "mlp"),
    "text": ("gru", "lstm", "transformer", "bow", "textcnn"),
    "tabular": ("mlp",),
}


@dataclass(frozen=True)
class Task:
    """One task instance.

    Attributes:
        dataset: a built-in name (``mnist``, ``cifar10``, ``imdb``, ``ag_news``, ``trec``,
            ``digits``), a hub dataset name, or a local folder of parquet/CSV files.
        family: model family; ``None`` takes the dataset's default (``cnn``/``bow``/``mlp``).
        n_train: training examples to subsample (stratified, seeded); ``None`` keeps them all.
        classes: class subset (original label ids, relabelled 0..k-1); ``None`` keeps all.
        seed: seeds the validation split and the subsample.
        text_column / image_column / label_column: column names when they are not the usual ones.
        max_length: text only: keep the first ``max_length`` tokens of each sequence (the
            dataset's own length when ``None``); short sequences make cheap meta-training tasks.
    """

    dataset: str
    family: str | None = None
    n_train: int | None = None
    classes: tuple[int, ...] | None = None
    seed: int = 0
    text_column: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    max_length: int | None = None

    def key(self) -> str:
        """Stable, human-readable identifier, the same on every machine."""
        parts = [self.dataset.rstrip("/").replace("/", ":"), self.family or "default"]
        parts.append(f"n{self.n_train}" if self.n_train else "nall")
        parts.append("c" + "-".join(map(str, self.classes)) if self.classes else "call")
        parts.append(f"s{self.seed}")
        for name in ("text_column", "image_column", "label_column"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name.split('_')[0]}={value}")
        if self.max_length:
            parts.append(f"L{self.max_length}")
        return "/".join(parts)

    def replace(self, **changes: object) -> Task:
        return dataclasses.replace(self, **changes)


@dataclass
class TaskData:
    """A loaded task: preprocessed tensors and the facts about them.

    Images are float32 ``(N, C, H, W)``, normalised with the training split's per-channel mean
    and std; text is int64 token ids ``(N, L)`` padded with 0; tabular is float32 ``(N, D)``,
    standardised. Labels are int64 in ``0..n_classes-1``.
    """

    task: Task
    modality: str
    family: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    source: str  # where the data came from: "local:<dir>", "hub:<name>" or "bundled:<package>"
    vocab_size: int | None = None  # text only; id 0 is padding

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def with_validation_trained(self) -> TaskData:
        """This data with the validation examples added to the training ones, for a final refit.

        The validation split stays, so a training on the result still reports validation figures each
        epoch, but they are then measured on examples it trained on.
        """
        return dataclasses.replace(
            self, x_train=torch.cat([self.x_train, self.x_val]), y_train=torch.cat([self.y_train, self.y_val])
        )
