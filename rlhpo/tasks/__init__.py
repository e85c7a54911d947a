"""Tasks: what a tuning episode trains on, and how it is loaded.

``Task`` names a dataset, model family, subsample, class subset and seed; ``load_task`` turns it
into ``TaskData`` tensors; ``meta_features`` describes it without training; ``TaskSampler`` draws
many diverse tasks. Datasets come from a local folder, the Hugging Face hub, or scikit-learn.
"""

from rlhpo.tasks.features import META_FEATURES, meta_feature_vector, meta_features
from rlhpo.tasks.loader import DatasetStatus, LoadedTasks, list_datasets, load_task
from rlhpo.tasks.registry import BUILTINS, DatasetSpec, get_spec
from rlhpo.tasks.sampler import TaskSampler
from rlhpo.tasks.task import FAMILIES_BY_MODALITY, MODALITIES, Task, TaskData

__all__ = [
    "BUILTINS",
    "FAMILIES_BY_MODALITY",
    "META_FEATURES",
    "MODALITIES",
    "DatasetSpec",
    "DatasetStatus",
    "LoadedTasks",
    "Task",
    "TaskData",
    "TaskSampler",
    "get_spec",
    "list_datasets",
    "load_task",
    "meta_feature_vector",
    "meta_features",
]
