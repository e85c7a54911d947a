"""The built-in datasets, and how a dataset name given by a user resolves to a :class:`DatasetSpec`.

A name is, in this order: a built-in (``mnist``...), an existing local folder of parquet/CSV files,
or a Hugging Face hub name (``owner/name``). Anything else is an error that suggests the closest
built-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rlhpo.errors import RlhpoError, unknown

DEFAULT_FAMILY = {"image": "cnn", "text": "bow", "tabular": "mlp"}

# Text datasets that are not built in: sequence-length cap and tokenizer vocabulary size.
USER_MAX_LEN = 128
USER_VOCAB_SIZE = 10_000

_HUB_NAME = re.compile(r"^\w[\w.-]*/\w[\w.-]*$")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it.

    Attributes:
        name: the name a user types (a built-in name, a hub name or a folder path).
        hub_path: the Hugging Face hub name, or ``None`` when there is none.
        modality: ``image``, ``text`` or ``tabular``; ``None`` when it is inferred from the columns.
        input_column: the image or text column (``None``: tabular, or inferred).
        label_column: the label column (``None``: inferred, ``label`` or ``labels``).
        family: the default model family (``None``: the modality's default).
        max_len: text only, the cap on the sequence length; the length used is the 90th
            percentile of the training texts' token counts, capped by this.
        vocab_size: text only, the vocabulary size the tokenizer is trained for.
        n_classes: the number of classes, when known without reading the data.
        bundled: the package the data ships with (``sklearn``), or ``None``.
        local_path: a user's folder holding ``train.*`` and ``test.*``, or ``None``.
        folder: the folder of a local data directory that holds it (``None``: its name). Two
            built-ins read one folder when they are two tasks on the same data (``trec_fine``).
    """

    name: str
    hub_path: str | None
    modality: str | None = None
    input_column: str | None = None
    label_column: str | None = None
    family: str | None = None
    max_len: int | None = None
    vocab_size: int | None = None
    n_classes: int | None = None
    bundled: str | None = None
    local_path: Path | None = None
    folder: str | None = None

    @property
    def data_folder(self) -> str:
        """The folder name under a local data directory (``--data-dir DIR``: ``DIR/<data_folder>/``)."""
        return self.folder or self.name


BUILTINS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "ylecun/mnist", "image", "image", "label", "cnn", n_classes=10),
        DatasetSpec("cifar10", "uoft-cs/cifar10", "image", "img", "label", "cnn", n_classes=10),
        DatasetSpec("imdb", "stanfordnlp/imdb", "text", "text", "label", "bow", 1024, 12_000, n_classes=2),
        DatasetSpec("ag_news", "fancyzhx/ag_news", "text", "text", "label", "bow", 64, 10_000, n_classes=4),
        DatasetSpec("trec", "CogComp/trec", "text", "text", "coarse_label", "bow", 32, 4_000, n_classes=6),
        # TREC's 50 fine question types: the same questions, a harder task (many rare classes).
        DatasetSpec(
            "trec_fine", "CogComp/trec", "text", "text", "fine_label", "bow", 32, 4_000, n_classes=50, folder="trec"
        ),
        DatasetSpec("digits", None, "tabular", None, "label", "mlp", n_classes=10, bundled="sklearn"),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """Resolve a dataset name: a built-in, an existing local folder, or a hub name ``owner/name``.

    Raises:
        RlhpoError: for any other name, with the closest built-in name.
    """
    if name in BUILTINS:
        return BUILTINS[name]
    folder = Path(name).expanduser()
    if folder.is_dir():
        return DatasetSpec(name, None, max_len=USER_MAX_LEN, vocab_size=USER_VOCAB_SIZE, local_path=folder.resolve())
    if _HUB_NAME.match(name):
        return DatasetSpec(name, name, max_len=USER_MAX_LEN, vocab_size=USER_VOCAB_SIZE)
    raise unknown("task", name, BUILTINS)


def data_source(name: str) -> str:
    """Where a dataset's examples come from: its hub name, else its folder; two tasks on the same data share it.

    ``trec`` and ``trec_fine`` (one set of questions, coarse and fine labels) share one. A name
    :func:`get_spec` does not resolve (a folder a recorded task was read from, now gone) is its own source.
    """
    try:
        spec = get_spec(name)
    except RlhpoError:
        return name
    return spec.hub_path or str(spec.local_path or spec.folder or spec.name)
