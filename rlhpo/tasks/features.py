"""Task meta-features, computed from the data alone (no training): the observation of a task."""

from __future__ import annotations

import math

import numpy as np

from rlhpo.tasks.task import MODALITIES, TaskData

# The fixed order of the meta-feature vector the environment observes; each lies in [0, 1].
# ``family_*`` is the task's own family, one-hot over the families there were when the vector was
# fixed: bow and textcnn (text's default is bow) came later and have no slot, so their tasks show
# all zeros there. The vector keeps its length so that every saved policy still loads.
META_FEATURES = (
    "modality_image",
    "modality_text",
    "modality_tabular",
    "family_cnn",
    "family_mlp",
    "family_gru",
    "family_lstm",
    "family_transformer",
    "log_n_train",  # log10(n_train) / 5
    "log_n_classes",  # log2(n_classes) / 7
    "class_entropy",  # entropy of the training labels / log(n_classes)
    "log_input_size",  # log10(prod(input_shape)) / 4: pixels*channels, sequence length or features
    "log_vocab_size",  # log10(vocab_size + 1) / 5; 0 for non-text
)
FAMILIES = tuple(name.removeprefix("family_") for name in META_FEATURES if name.startswith("family_"))


def meta_features(data: TaskData) -> dict[str, float]:
    """The task's meta-features, by name in :data:`META_FEATURES` order, each clipped to [0, 1]."""
    n_train = max(len(data.y_train), 1)
    n_classes = max(data.n_classes, 1)
    counts = np.bincount(data.y_train.numpy(), minlength=n_classes)
    values = {f"modality_{m}": float(data.modality == m) for m in MODALITIES}
    values.update({f"family_{f}": float(data.family == f) for f in FAMILIES})
    values["log_n_train"] = math.log10(n_train) / 5
    values["log_n_classes"] = math.log2(n_classes) / 7
    values["class_entropy"] = _entropy(counts) / math.log(n_classes) if n_classes > 1 else 0.0
    values["log_input_size"] = math.log10(max(math.prod(data.input_shape), 1)) / 4
    values["log_vocab_size"] = math.log10(data.vocab_size + 1) / 5 if data.vocab_size else 0.0
    return {name: float(np.clip(values[name], 0.0, 1.0)) for name in META_FEATURES}


def meta_feature_vector(data: TaskData) -> np.ndarray:
    """:func:`meta_features` as a float32 vector in :data:`META_FEATURES` order."""
    return np.array(list(meta_features(data).values()), dtype=np.float32)


def _entropy(counts: np.ndarray) -> float:
    if counts.sum() == 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
