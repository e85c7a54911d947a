"""What the commands of :mod:`rlhpo.cli` share: options, options made from a settings dataclass, output.

A settings dataclass is both the settings and the command's options (CleanRL's ``Args``): each
field becomes ``--field-name`` with its type, default and ``metadata["help"]``; a tuple field
takes comma-separated values; ``metadata["flag"]`` renames the option, ``metadata["choices"]``
restricts it and ``metadata["envvar"]`` names an environment variable that sets it.

:func:`emit` is the one way a command prints its result: the summary as one JSON object
(``--json``) or the report lines its module built.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RLHPO_DATA_DIR",
    help="Folder of <name>/{train,test}.parquet in the Hugging Face hub schema "
    "(default: $RLHPO_DATA_DIR, then the hub, then bundled data).",
)
runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run folders go (default: $RLHPO_RUNS_DIR or ./runs).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
seed_option = click.option("--seed", type=int, default=0, show_default=True)
device_option = click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
policy_option = click.option(
    "--policy",
    type=click.Path(path_type=Path),
    default=None,
    help="policy.zip (or a train-agent run folder) (default: the shipped policy).",
)


def executor_options(what: str, workers_help: str) -> Callable[[F], F]:
    """``--workers``, ``--executor`` and ``--address``: where ``what`` (runs, trials) train, and on how many workers."""
    return _options(
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help=workers_help),
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=f"Where {what} train: local worker processes, or Ray tasks (needs pip install 'rlhpo[ray]').",
        ),
        click.option(
            "--address",
            default=None,
            help="--executor ray: the Ray cluster to use, 'auto' or HOST:PORT (default: start a local Ray instance).",
        ),
    )


def out_store_option(help: str) -> Callable[[F], F]:
    """``-o/--out``: the store a store command writes."""
    return click.option(
        "-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help=help
    )


def space_option(default: str) -> Callable[[F], F]:
    """``--space``, a search-space YAML; ``default`` says which space is used without it."""
    return click.option(
        "--space",
        "space_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Search-space YAML (default: {default}).",
    )


task_options = _options(
    click.option(
        "--task",
        "dataset",
        default="digits",
        show_default=True,
        help="Built-in task, hub dataset name, or local folder of parquet/CSV files.",
    ),
    click.option(
        "--model",
        "family",
        default=None,
        help="Model family (cnn, mlp, bow, textcnn, gru, lstm, transformer; default: the dataset's).",
    ),
    click.option("--n-train", type=click.IntRange(min=2), default=None, help="Subsample the training set."),
    click.option("--text-column", default=None, help="Text column of a user dataset."),
    click.option("--image-column", default=None, help="Image column of a user dataset."),
    click.option("--label-column", default=None, help="Label column of a user dataset."),
    data_dir_option,
)
TASK_OPTIONS = ("dataset", "family", "n_train", "text_column", "image_column", "label_column")


def make_task(seed: int, **options: Any) -> Any:
    """The :class:`~rlhpo.tasks.Task` of :data:`task_options`' values."""
    from rlhpo.tasks import Task

    return Task(seed=seed, **{k: options[k] for k in TASK_OPTIONS})


def settings_options(cls: type) -> Callable[[F], F]:
    """Click options for every field of the dataclass ``cls`` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    decorators = []
    for f in dataclasses.fields(cls):
        kind, optional = _unwrap(hints[f.name])
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        common: dict[str, Any] = {"help": f.metadata.get("help"), "show_default": default is not None}
        if "envvar" in f.metadata:
            common["envvar"] = f.metadata["envvar"]
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            text = ",".join(str(v) for v in default)
            common.update(default=text, callback=_csv(f.name, item))
        elif "choices" in f.metadata:
            common.update(type=click.Choice(f.metadata["choices"]), default=default)
        else:
            common.update(type={int: int, float: float, str: str}[kind], default=None if optional else default)
        decorators.append(click.option(flag, f.name, **common))
    return _options(*decorators)


def settings_from(cls: type, options: dict[str, Any]) -> Any:
    """An instance of ``cls`` from the values of its :func:`settings_options` (other keys are ignored)."""
    return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls) if f.name in options})


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether ``None`` is allowed) of ``X`` or ``X | None``."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        return args[0], True
    return hint, False


def _csv(name: str, item: type) -> Callable[[click.Context, click.Parameter, str], tuple[Any, ...]]:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[Any, ...]:
        try:
            items = tuple(item(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {name} ({item.__name__}), got {value!r}") from None
        if not items:
            raise click.BadParameter(f"expected at least one value for {name}")
        return items

    return parse


def emit(summary: dict[str, Any], as_json: bool, lines: Iterable[str]) -> None:
    """Print a command's result: the summary as one JSON object, or its report lines."""
    if as_json:
        click.echo(json.dumps(summary))
        return
    for line in lines:
        click.echo(line)
