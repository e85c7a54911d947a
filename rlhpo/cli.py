"""The ``rlhpo`` command line. Each command parses, calls one library function, echoes the result."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import click

from rlhpo.errors import RlhpoError

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Shows an :class:`RlhpoError` as one line and a non-zero exit; ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RlhpoError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """rlhpo: meta-learned hyperparameter tuning."""
    ctx.obj = {"debug": debug}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def data_dir_option(f: Any) -> Any:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="RLHPO_DATA_DIR",
        help="Folder with <name>/{train,test}.parquet (default: $RLHPO_DATA_DIR, then the hub, then bundled data).",
    )(f)


def task_options(f: Any) -> Any:
    """Options that name a task: the dataset, its model family, subsample and columns."""
    for opt in reversed(
        [
            click.option(
                "--task",
                "dataset",
                default="digits",
                show_default=True,
                help="Built-in task, hub dataset name, or local folder of parquet/CSV files.",
            ),
            click.option("--model", "family", default=None, help="Model family (cnn, mlp, gru, lstm, transformer)."),
            click.option("--n-train", type=click.IntRange(min=2), default=None, help="Subsample the training set."),
            click.option("--text-column", default=None, help="Text column of a user dataset."),
            click.option("--image-column", default=None, help="Image column of a user dataset."),
            click.option("--label-column", default=None, help="Label column of a user dataset."),
            data_dir_option,
        ]
    ):
        f = opt(f)
    return f


def make_task(dataset: str, family: str | None, n_train: int | None, seed: int, **columns: str | None) -> Any:
    from rlhpo.tasks import Task

    return Task(dataset=dataset, family=family, n_train=n_train, seed=seed, **columns)


@main.command("tasks")
@data_dir_option
def tasks_cmd(data_dir: Path | None) -> None:
    """List the built-in tasks, their source and whether their data is available here."""
    from rlhpo.tasks import list_datasets

    rows = list_datasets(data_dir)
    click.echo(f"{'task':<10} {'modality':<8} {'model':<6} {'available':<9} source")
    for r in rows:
        click.echo(f"{r.name:<10} {r.modality:<8} {r.family:<6} {'yes' if r.available else 'no':<9} {r.source}")


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RlhpoError(f"--set takes name=value, e.g. --set learning_rate=0.003, but got {item!r}.")
        out[name.strip()] = value.strip()
    return out


@main.command("train")
@task_options
@click.option(
    "--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override one hyperparameter of the default config."
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs to train (default: the config's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option(
    "--space",
    "space_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Search-space YAML (default: the shipped configs/search_space.yaml).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run folders go (default: $RLHPO_RUNS_DIR or ./runs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def train_cmd(
    dataset: str,
    family: str | None,
    n_train: int | None,
    text_column: str | None,
    image_column: str | None,
    label_column: str | None,
    data_dir: Path | None,
    sets: tuple[str, ...],
    epochs: int | None,
    seed: int,
    device: str,
    space_path: Path | None,
    runs_dir: Path | None,
    as_json: bool,
) -> None:
    """Train one config on one task and report its curve and test metrics."""
    from rlhpo.agents.sb3_logging import tensorboard_logger
    from rlhpo.runs import train_run
    from rlhpo.space import load_search_space

    space = load_search_space(space_path)
    config = space.override(space.default, parse_sets(sets))
    task = make_task(
        dataset, family, n_train, seed, text_column=text_column, image_column=image_column, label_column=label_column
    )

    def on_epoch(e: Any) -> None:
        click.echo(
            f"epoch {e.epoch:>3}  train_loss {e.train_loss:.4f}  val_loss {e.val_loss:.4f}  "
            f"val_acc {e.val_accuracy:.4f}  val_f1 {e.val_macro_f1:.4f}  {e.seconds:.1f}s",
            err=True,
        )

    started = time.perf_counter()
    summary = train_run(
        task,
        config,
        epochs=epochs,
        seed=seed,
        device=device,
        data_dir=data_dir,
        runs_dir=runs_dir,
        make_logger=tensorboard_logger,
        on_epoch=on_epoch,
    )
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"task {summary['task']} ({summary['model']}, {summary['source']}), config {summary['config']}")
    if summary["diverged"]:
        click.echo(f"diverged after {len(summary['curve'])} completed epochs")
    click.echo(
        f"test accuracy {summary['test_accuracy']:.4f}  test macro-F1 {summary['test_macro_f1']:.4f}  "
        f"val loss {summary['val_loss'] if summary['val_loss'] is None else round(summary['val_loss'], 4)}"
    )
    click.echo(f"{time.perf_counter() - started:.1f}s; run folder {summary['run_dir']}")
