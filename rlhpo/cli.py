"""The ``rlhpo`` command line. Each command parses, calls one library function, prints its result.

Shared options and the one output path (:func:`~rlhpo.cli_options.emit`: report lines or
``--json``) are in :mod:`rlhpo.cli_options`; the report lines are built in the modules that
made the result. An :class:`~rlhpo.errors.RlhpoError` is one line and exit 1 (``--debug`` shows
the traceback); Ctrl-C is exit 130, with the run folder and how to continue when there is one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rlhpo.agents.settings import TUNE_METHODS, BenchSettings
from rlhpo.cli_options import (
    data_dir_option,
    device_option,
    emit,
    executor_options,
    json_option,
    make_task,
    out_store_option,
    policy_option,
    runs_dir_option,
    seed_option,
    settings_from,
    settings_options,
    space_option,
    task_options,
)
from rlhpo.errors import RlhpoError, RunInterrupted, unknown
from rlhpo.space import DEFAULT_BUDGET_FTE

if TYPE_CHECKING:
    from rlhpo.collect import CollectResult

log = logging.getLogger(__name__)

INTERRUPTED = 130  # the shell's exit status for Ctrl-C


class _Group(click.Group):
    """Shows an :class:`RlhpoError` as one line and a non-zero exit; Ctrl-C exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunInterrupted as e:
            click.echo(str(e), err=True)
            ctx.exit(INTERRUPTED)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED)
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


@main.command("tasks")
@data_dir_option
def tasks_cmd(data_dir: Path | None) -> None:
    """List the built-in tasks, their source and whether their data is available here."""
    from rlhpo.tasks import list_datasets

    rows = list_datasets(data_dir)
    click.echo(f"{'task':<10} {'modality':<8} {'model':<6} {'available':<9} source")
    for r in rows:
        click.echo(f"{r.name:<10} {r.modality:<8} {r.family:<6} {'yes' if r.available else 'no':<9} {r.source}")
    hints = dict.fromkeys(r.hint for r in rows if not r.available and r.hint)
    for hint in hints:
        click.echo(hint)


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
@seed_option
@device_option
@space_option("the shipped configs/search_space.yaml")
@runs_dir_option
@json_option
def train_cmd(
    data_dir: Path | None,
    sets: tuple[str, ...],
    epochs: int | None,
    seed: int,
    device: str,
    space_path: Path | None,
    runs_dir: Path | None,
    as_json: bool,
    **task: Any,
) -> None:
    """Train one config on one task and report its curve and test metrics."""
    from rlhpo.runs import epoch_line, train_report_lines, train_run
    from rlhpo.space import load_search_space

    space = load_search_space(space_path)
    config = space.override(space.default, parse_sets(sets))
    summary = train_run(
        make_task(seed, **task),
        config,
        epochs=epochs,
        seed=seed,
        device=device,
        data_dir=data_dir,
        runs_dir=runs_dir,
        on_epoch=lambda e: click.echo(epoch_line(e), err=True),
    )
    emit(summary, as_json, train_report_lines(summary))


@main.command("collect")
@click.option(
    "--tasks",
    "datasets",
    default="all",
    show_default=True,
    help="Comma-separated datasets of the instances file to record, or 'all'.",
)
@click.option(
    "--families",
    default="all",
    show_default=True,
    help="Comma-separated model families whose design runs to record (e.g. the cheap ones first), or 'all'.",
)
@click.option(
    "--instances",
    "instances_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML of task instances and sample size (default: the shipped configs/collect.yaml).",
)
@click.option(
    "--configs", type=click.IntRange(min=1), default=None, help="Configs per task instance (default: the file's)."
)
@executor_options("runs", "Worker processes (--executor ray without --address: the local Ray instance's CPUs).")
@click.option(
    "--seed", type=int, default=None, help="Seed of the config design and the drawn instances (default: the file's)."
)
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("runs/store.sqlite"),
    show_default=True,
    help="The curve store (SQLite); created if missing, resumed if not.",
)
@data_dir_option
def collect_cmd(
    datasets: str,
    families: str,
    instances_path: Path | None,
    configs: int | None,
    workers: int,
    executor: str,
    address: str | None,
    seed: int | None,
    store_path: Path,
    data_dir: Path | None,
) -> None:
    """Record the curves of the matched config design on every task instance (resumable, breadth first)."""
    from rlhpo.collect import collect, load_collect_settings, make_executor

    settings = load_collect_settings(instances_path)
    if configs is not None:
        settings = settings.with_configs(configs)
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    names = None if datasets == "all" else [d.strip() for d in datasets.split(",") if d.strip()]
    only = None if families == "all" else [f.strip() for f in families.split(",") if f.strip()]
    if only is not None:
        from rlhpo.models import FAMILIES

        for family in only:
            if family not in FAMILIES:
                raise unknown("model family", family, FAMILIES)
    runner = make_executor(executor, workers, address)
    if data_dir is not None:
        data_dir = data_dir.expanduser().resolve()  # workers elsewhere (Ray) read the same absolute path
    try:
        result = collect(settings, store_path, datasets=names, data_dir=data_dir, executor=runner, only_families=only)
    except KeyboardInterrupt:
        raise RunInterrupted(store_path, "run the same command again (finished runs are kept)", "store") from None
    echo_recorded(
        result,
        f"{result.tasks} tasks, {result.runs} runs: trained {result.trained}, already recorded {result.skipped}",
    )


def echo_recorded(result: CollectResult, head: str) -> None:
    """One line on what a collect or retrain recorded, one per failed run (then exit status 1)."""
    click.echo(f"{head}, failed {len(result.failed)} in {result.seconds:.0f}s; store {result.store}")
    for line in result.failed:
        click.echo(f"failed: {line.splitlines()[0]}", err=True)
    if result.failed:
        raise SystemExit(1)


@main.group("store")
def store_group() -> None:
    """Inspect, export, merge and repair curve stores."""


store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("runs/store.sqlite"),
    show_default=True,
    help="The curve store (SQLite).",
)


@store_group.command("export")
@store_option
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the files."
)
def store_export_cmd(store_path: Path, out_dir: Path) -> None:
    """Write the store as Parquet: tasks, runs, and curves (one row per epoch, joined)."""
    from rlhpo.store import export_store

    for name, path in export_store(store_path, out_dir).items():
        click.echo(f"{name}: {path}")


@store_group.command("info")
@store_option
def store_info_cmd(store_path: Path) -> None:
    """Count the tasks, runs and epochs in the store."""
    from rlhpo.store import CurveStore

    with CurveStore(store_path, readonly=True) as store:
        counts, size_mb = store.count(), store.size_mb()
    click.echo(
        f"{store_path}: {counts['tasks']} tasks, {counts['runs']} runs, {counts['epochs']} epochs, {size_mb:.1f} MB"
    )


@store_group.command("drop-family")
@click.argument("family")
@store_option
def store_drop_family_cmd(family: str, store_path: Path) -> None:
    """Delete the runs that trained FAMILY (after its model changed); collect records them again."""
    from rlhpo.store import CurveStore

    if not store_path.is_file():
        raise RlhpoError(f"No curve store at {store_path}.")
    with CurveStore(store_path) as store:
        dropped, left = store.drop_family(family), store.count()["runs"]
    click.echo(f"{store_path}: dropped {dropped} runs of family {family!r}; {left} runs left")


@store_group.command("retrain-family")
@click.argument("family")
@store_option
@out_store_option("The new store; an existing one is resumed.")
@executor_options("runs", "Worker processes (--executor ray without --address: the local Ray instance's CPUs).")
@data_dir_option
def store_retrain_family_cmd(
    family: str,
    store_path: Path,
    out_path: Path,
    workers: int,
    executor: str,
    address: str | None,
    data_dir: Path | None,
) -> None:
    """Copy the store to OUT with FAMILY's runs trained again (after its model changed); resumable.

    Every run of FAMILY is trained again on its task instance with its config, seed and epochs;
    the other runs are copied. For a store whose collect plan is gone, such as the shipped
    meta-dataset; on a store that collect keeps, drop-family and collect again do the same.
    """
    from rlhpo.collect import make_executor, retrain_family

    if not store_path.is_file():
        raise RlhpoError(f"No curve store at {store_path}.")
    if data_dir is not None:
        data_dir = data_dir.expanduser().resolve()
    runner = make_executor(executor, workers, address)
    try:
        result = retrain_family(store_path, out_path, family, data_dir=data_dir, executor=runner)
    except KeyboardInterrupt:
        raise RunInterrupted(out_path, "run the same command again (finished runs are kept)", "store") from None
    echo_recorded(result, f"{result.runs} runs of {family!r}: trained {result.trained}, already there {result.skipped}")


@store_group.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_store_option("The merged store: a new file (an existing one is never overwritten).")
@json_option
def store_merge_cmd(sources: tuple[Path, ...], out_path: Path, as_json: bool) -> None:
    """Merge stores recorded on different machines into a new one: one run per (task, config, seed).

    Of two runs under one key the longer is kept, else the first store's; runs whose figures
    differ are reported as conflicts. A task described differently in two stores is an error.
    """
    from rlhpo.store import merge_stores

    report = merge_stores(sources, out_path)
    emit(report.to_dict(), as_json, report.lines())


@store_group.command("import-optuna")
@click.option("--storage", required=True, help="Optuna storage: a database URL (sqlite:///study.db) or a journal file.")
@click.option("--study", "study_name", required=True, help="The study to import.")
@task_options
@click.option("--seed", type=int, default=0, show_default=True, help="Task seed, and training seed of the runs.")
@store_option
@space_option("the shipped configs/search_space.yaml")
@json_option
def store_import_optuna_cmd(
    storage: str,
    study_name: str,
    data_dir: Path | None,
    seed: int,
    store_path: Path,
    space_path: Path | None,
    as_json: bool,
    **task: Any,
) -> None:
    """Import an Optuna study's trials on a task as curves (their intermediate values are scores).

    A trial whose params are all choices of the space and whose intermediate values are the
    score after each epoch, (acc - chance) / (1 - chance), becomes a run; the others are counted
    by why they were skipped.
    """
    from rlhpo.agents.optuna_interop import import_study

    result = import_study(
        storage, study_name, make_task(seed, **task), store_path, space=space_path, train_seed=seed, data_dir=data_dir
    )
    emit(result.to_dict(), as_json, result.lines())


@main.group("surrogate")
def surrogate_group() -> None:
    """Fit a curve surrogate on a store (meta-training's `backend: surrogate`) and report on it."""


@surrogate_group.command("fit")
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The curve store to fit on (default: the shipped meta-dataset).",
)
@click.option(
    "-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The file to write."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples and the trees.")
@click.option("--members", type=click.IntRange(min=1), default=8, show_default=True, help="Fits in the ensemble.")
@click.option(
    "--exclude-datasets", default="", help="Comma-separated datasets not to fit on (held out of meta-training)."
)
@click.option("--train-seed", type=int, default=0, show_default=True, help="Training seed of the runs to fit on.")
@space_option("the shipped configs/search_space.yaml")
def surrogate_fit_cmd(
    store_path: Path | None,
    out_path: Path,
    seed: int,
    members: int,
    exclude_datasets: str,
    train_seed: int,
    space_path: Path | None,
) -> None:
    """Fit the surrogate (an ensemble of gradient-boosted trees) on a store's curves and save it."""
    from rlhpo.envs.surrogate import SurrogateSettings, fit_surrogate
    from rlhpo.space import load_search_space

    excluded = tuple(d.strip() for d in exclude_datasets.split(",") if d.strip())
    settings = SurrogateSettings(members=members, seed=seed, train_seed=train_seed, exclude_datasets=excluded)
    model = fit_surrogate(store_path, settings, space=load_search_space(space_path))
    path = model.save(out_path)
    for line in model.describe_lines():
        click.echo(line)
    click.echo(f"surrogate {path}")


@surrogate_group.command("report")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def surrogate_report_cmd(path: Path) -> None:
    """Show what a surrogate file was fit on and its quality figures."""
    from rlhpo.envs.surrogate import load_surrogate

    for line in load_surrogate(path).describe_lines():
        click.echo(line)


@main.command("train-agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings YAML (default: the shipped configs/train_agent.yaml).",
)
@click.option("--run-name", default=None, help="Name of the run folder (default: stamp, command, seed).")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Continue this run folder from its last checkpoint (its config.yaml is used).",
)
@click.option("--seed", type=int, default=None, help="Seed of PPO and the environments (default: the config's).")
@click.option(
    "--total-steps", type=click.IntRange(min=1), default=None, help="Environment steps (default: the config's)."
)
@runs_dir_option
@json_option
def train_agent_cmd(
    config_path: Path | None,
    run_name: str | None,
    resume: Path | None,
    seed: int | None,
    total_steps: int | None,
    runs_dir: Path | None,
    as_json: bool,
) -> None:
    """Meta-train the PPO tuner on recorded curves, then evaluate it against the default config and random search."""
    from rlhpo.agents.meta_train import report_lines, train_agent
    from rlhpo.agents.settings import load_train_agent_settings

    if resume is not None and (config_path is not None or run_name is not None):
        raise RlhpoError(
            "--resume continues a run with its own config.yaml and folder; leave --config and --run-name out."
        )
    settings = None if resume is not None else load_train_agent_settings(config_path)
    summary = train_agent(
        settings, resume=resume, run_name=run_name, seed=seed, total_steps=total_steps, runs_dir=runs_dir
    )
    emit(summary, as_json, report_lines(summary))


@main.command("tune")
@task_options
@click.option(
    "--budget",
    "budget_fte",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BUDGET_FTE,
    show_default=True,
    help="Tuning budget in full-training equivalents (x the largest epochs choice).",
)
@policy_option
@space_option("the one the policy was trained in")
@seed_option
@device_option
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Continue the interrupted tune in this run folder, with its own settings (other options are ignored).",
)
@click.option(
    "--storage",
    default=None,
    help="Also add every trial to an Optuna study here: a database URL (sqlite:///study.db) or a journal file.",
)
@click.option("--study-name", default=None, help="The Optuna study (with --storage); an existing one is continued.")
@click.option(
    "--method",
    type=click.Choice(TUNE_METHODS),
    default="ppo",
    show_default=True,
    help="ppo: the policy. ppo_tpe: the policy for its meta-training budget (3 FTE), then the learned list and "
    "Optuna TPE: the same up to 3 FTE, better from about 10 (one trial at a time).",
)
@click.option(
    "--refit/--no-refit",
    default=True,
    show_default=True,
    help="Train the chosen config on the training and validation splits together (else on the training split).",
)
@executor_options(
    "--workers trials", "Trials at once: each step trains the policy's N most likely new configs concurrently (on CPU)."
)
@runs_dir_option
@json_option
def tune_cmd(
    data_dir: Path | None,
    budget_fte: float,
    policy: Path | None,
    space_path: Path | None,
    seed: int,
    device: str,
    resume: Path | None,
    storage: str | None,
    study_name: str | None,
    method: str,
    refit: bool,
    workers: int,
    executor: str,
    address: str | None,
    runs_dir: Path | None,
    as_json: bool,
    **task: Any,
) -> None:
    """Tune a task with the meta-trained policy, then train the chosen config at full fidelity and test it."""
    import optuna

    from rlhpo.agents.tune import SCORE_NOTE, report_lines, trial_line, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study created otherwise
    if not as_json:
        click.echo(SCORE_NOTE, err=True)
    summary = tune(
        None if resume is not None else make_task(seed, **task),
        budget_fte=budget_fte,
        policy=policy,
        space=space_path,
        seed=seed,
        data_dir=data_dir,
        device=device,
        runs_dir=runs_dir,
        on_trial=lambda t: click.echo(trial_line(t), err=True),
        resume=resume,
        storage=storage,
        study_name=study_name,
        workers=workers,
        executor=executor,
        address=address,
        method=method,
        refit=refit,
    )
    emit(summary, as_json, report_lines(summary))


@main.command("suggest")
@task_options
@click.option("--n", type=click.IntRange(min=1), default=5, show_default=True, help="How many configs.")
@policy_option
@seed_option
@json_option
def suggest_cmd(data_dir: Path | None, n: int, policy: Path | None, seed: int, as_json: bool, **task: Any) -> None:
    """Zero-shot configs for a task from its meta-features alone (no training), best first."""
    from rlhpo.agents.suggest import suggest

    result = suggest(make_task(seed, **task), n, policy=policy, data_dir=data_dir)
    emit(result.to_dict(), as_json, result.lines())


@main.command("bench")
@settings_options(BenchSettings)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bench folder (default: a new run folder); an interrupted bench there resumes.",
)
@json_option
def bench_cmd(out_dir: Path | None, as_json: bool, **options: Any) -> None:
    """Compare the tuners on held-out tasks at equal budgets: CSV, Markdown table and anytime plot."""
    import optuna
    from tqdm import tqdm

    from rlhpo.agents.bench import run_bench
    from rlhpo.agents.bench_report import console_lines

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per Optuna trial otherwise
    settings = settings_from(BenchSettings, options)
    with tqdm(desc="bench episodes", unit="ep", disable=as_json) as bar:
        summary = run_bench(settings, out_dir, progress=lambda row: bar.update(1))
    emit(summary, as_json, console_lines(summary))


@main.command("replay")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--episode", type=click.IntRange(min=0), default=None, help="Only this episode.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG.")
@click.option("--verify", is_flag=True, help="Re-execute the recorded actions and check every step matches.")
@data_dir_option
def replay_cmd(run_dir: Path, episode: int | None, plot_path: Path | None, verify: bool, data_dir: Path | None) -> None:
    """Show the episodes of a run's rollouts.jsonl; plot them; re-execute them (--verify)."""
    from rlhpo.agents import replay

    rollouts = replay.read_rollouts(run_dir)
    episodes = [rollouts.episode(episode)] if episode is not None else rollouts.episodes
    for line in replay.report_lines(rollouts, episodes, with_choices=episode is None):
        click.echo(line)
    if plot_path is not None:
        click.echo(f"plot {replay.plot(rollouts, plot_path, episodes)}")
    if verify:
        checks = replay.verify(rollouts, episode=episode, data_dir=data_dir)
        for line in replay.verify_lines(checks, rollouts.header):
            click.echo(line)
        if not all(c.ok for c in checks):
            raise SystemExit(1)
