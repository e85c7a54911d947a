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
    echo_test_metrics(summary)
    click.echo(f"{time.perf_counter() - started:.1f}s; run folder {summary['run_dir']}")


def echo_test_metrics(summary: dict[str, Any]) -> None:
    """The final training's test accuracy, macro-F1 and validation loss (``train`` and ``tune``)."""
    if summary["diverged"]:
        click.echo(f"diverged after {len(summary['curve'])} completed epochs")
    val_loss = "-" if summary["val_loss"] is None else f"{summary['val_loss']:.4f}"
    click.echo(
        f"test accuracy {summary['test_accuracy']:.4f}  "
        f"test macro-F1 {summary['test_macro_f1']:.4f}  val loss {val_loss}"
    )


@main.command("collect")
@click.option(
    "--tasks",
    "datasets",
    default="all",
    show_default=True,
    help="Comma-separated datasets of the instances file to record, or 'all'.",
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
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--seed", type=int, default=None, help="Seed of the config sample (default: the file's).")
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
    instances_path: Path | None,
    configs: int | None,
    workers: int,
    seed: int | None,
    store_path: Path,
    data_dir: Path | None,
) -> None:
    """Record the curves of a space-filling sample of configs on every task instance (resumable)."""
    import dataclasses

    from rlhpo.collect import collect, load_collect_settings

    settings = load_collect_settings(instances_path)
    if configs is not None:
        settings = settings.with_configs(configs)
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    names = None if datasets == "all" else [d.strip() for d in datasets.split(",") if d.strip()]
    try:
        result = collect(settings, store_path, workers=workers, datasets=names, data_dir=data_dir)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {store_path} keeps every finished run; run the same command to resume", err=True)
        raise SystemExit(130) from None
    click.echo(
        f"{result.tasks} tasks, {result.runs} runs: trained {result.trained}, already recorded "
        f"{result.skipped}, failed {len(result.failed)} in {result.seconds:.0f}s; store {result.store}"
    )
    for line in result.failed:
        click.echo(f"failed: {line.splitlines()[0]}", err=True)
    if result.failed:
        raise SystemExit(1)


@main.group("store")
def store_group() -> None:
    """Inspect and export a curve store."""


@store_group.command("export")
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("runs/store.sqlite"),
    show_default=True,
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the files."
)
def store_export_cmd(store_path: Path, out_dir: Path) -> None:
    """Write the store as Parquet: tasks, runs, and curves (one row per epoch, joined)."""
    from rlhpo.store import export_store

    for name, path in export_store(store_path, out_dir).items():
        click.echo(f"{name}: {path}")


@store_group.command("info")
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("runs/store.sqlite"),
    show_default=True,
)
def store_info_cmd(store_path: Path) -> None:
    """Count the tasks, runs and epochs in the store."""
    from rlhpo.store import CurveStore

    with CurveStore(store_path, readonly=True) as store:
        counts = store.count()
    click.echo(f"{store_path}: {counts['tasks']} tasks, {counts['runs']} runs, {counts['epochs']} epochs")


def _runs_dir_option(f: Any) -> Any:
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where run folders go (default: $RLHPO_RUNS_DIR or ./runs).",
    )(f)


def _policy_option(f: Any) -> Any:
    return click.option(
        "--policy",
        type=click.Path(path_type=Path),
        default=None,
        help="policy.zip (or a train-agent run folder) (default: the shipped policy).",
    )(f)


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
@_runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
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
    from rlhpo.agents.evaluate import pm
    from rlhpo.agents.ppo import train_agent
    from rlhpo.agents.settings import load_train_agent_settings

    if resume is not None and (config_path is not None or run_name is not None):
        raise RlhpoError(
            "--resume continues a run with its own config.yaml and folder; leave --config and --run-name out."
        )
    settings = None if resume is not None else load_train_agent_settings(config_path)
    summary = train_agent(
        settings, resume=resume, run_name=run_name, seed=seed, total_steps=total_steps, runs_dir=runs_dir
    )
    if as_json:
        click.echo(json.dumps(summary))
        return
    ev = summary["evaluation"]
    click.echo(
        f"trained {summary['num_timesteps']} steps in {summary['train_seconds']:.1f}s on "
        f"{len(summary['train_tasks'])} tasks; policy {summary['policy']}"
    )
    click.echo(f"evaluation at {ev['budget_epochs']} epochs, {len(ev['seeds'])} seeds per task (normalised scores):")
    click.echo(f"{'tasks':<8} {'method':<8} {'incumbent':<15} {'full fidelity':<15} {'regret':<15}")
    for group, result in ev["groups"].items():
        for method, row in result["methods"].items():
            click.echo(
                f"{group:<8} {method:<8} {pm((row['incumbent_score'], row['incumbent_score_se'])):<15} "
                f"{pm((row['full_fidelity_score'], row['full_fidelity_score_se'])):<15} "
                f"{pm((row['regret'], row['regret_se'])):<15}"
            )
    click.echo(f"run folder {summary['run_dir']}")


@main.command("tune")
@task_options
@click.option(
    "--budget",
    "budget_fte",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Tuning budget in full-training equivalents (x the largest epochs choice).",
)
@_policy_option
@click.option(
    "--space",
    "space_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Search-space YAML (default: the one the policy was trained in).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@_runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def tune_cmd(
    dataset: str,
    family: str | None,
    n_train: int | None,
    text_column: str | None,
    image_column: str | None,
    label_column: str | None,
    data_dir: Path | None,
    budget_fte: float,
    policy: Path | None,
    space_path: Path | None,
    seed: int,
    device: str,
    runs_dir: Path | None,
    as_json: bool,
) -> None:
    """Tune a task with the meta-trained policy, then retrain the best config and report its test metrics."""
    from rlhpo.agents.replay import short_config
    from rlhpo.agents.tune import tune

    task = make_task(
        dataset, family, n_train, seed, text_column=text_column, image_column=image_column, label_column=label_column
    )

    def on_trial(t: dict[str, Any]) -> None:
        acc = "-" if t["val_accuracy"] is None else f"{t['val_accuracy']:.4f}"
        click.echo(
            f"trial {t['step']:>2}  {short_config(t['config'])}  {t['epochs']} epochs  val_acc {acc}  "
            f"{t['seconds']:.1f}s{'  diverged' if t['diverged'] else ''}  incumbent {t['incumbent']:.4f}",
            err=True,
        )

    s = tune(
        task,
        budget_fte=budget_fte,
        policy=policy,
        space=space_path,
        seed=seed,
        data_dir=data_dir,
        device=device,
        runs_dir=runs_dir,
        on_trial=on_trial,
    )
    if as_json:
        click.echo(json.dumps(s))
        return
    click.echo(f"task {s['task']} ({s['model']}, {s['source']}); chosen config {short_config(s['config'])}")
    echo_test_metrics(s)
    click.echo(
        f"tuning {s['tuning_epochs']}/{s['budget_epochs']} epochs in {s['tuning_seconds']:.1f}s "
        f"(policy {s['policy_seconds']:.2f}s), final training {s['retrain_seconds']:.1f}s; run folder {s['run_dir']}"
    )


def _csv_list(kind: str, convert: Any = str) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            items = tuple(convert(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind}, got {value!r}") from None
        if not items:
            raise click.BadParameter(f"expected at least one {kind}")
        return items

    return parse


@main.command("bench")
@click.option(
    "--tasks",
    default="ag_news",
    show_default=True,
    callback=_csv_list("tasks"),
    help="Comma-separated datasets (or, recorded, task keys of the store).",
)
@click.option(
    "--methods",
    default=None,
    callback=_csv_list("methods"),
    help="Comma-separated tuners (default: all: ppo, default, random, tpe, tpe_hyperband, top_k, learned_list).",
)
@click.option(
    "--budgets",
    default="1,3,10,30",
    show_default=True,
    callback=_csv_list("budgets", float),
    help="Comma-separated budgets in full-training equivalents.",
)
@click.option(
    "--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="Episodes per task, method, budget."
)
@click.option("--first-seed", type=int, default=10000, show_default=True, help="The first evaluation seed.")
@click.option("--backend", type=click.Choice(["recorded", "live"]), default="recorded", show_default=True)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Recorded curves (default: the shipped meta-dataset).",
)
@_policy_option
@click.option("--model", "family", default=None, help="Live: model family (default: the dataset's).")
@click.option("--n-train", type=click.IntRange(min=2), default=None, help="Live: training examples (default: all).")
@data_dir_option
@click.option("--device", default="cpu", show_default=True, help="Live: torch device, e.g. cuda.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bench folder (default: a new run folder); an interrupted bench there resumes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def bench_cmd(
    tasks: tuple[str, ...],
    methods: tuple[str, ...] | None,
    budgets: tuple[float, ...],
    seeds: int,
    first_seed: int,
    backend: str,
    store: Path | None,
    policy: Path | None,
    family: str | None,
    n_train: int | None,
    data_dir: Path | None,
    device: str,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Compare the tuners on held-out tasks at equal budgets: CSV, Markdown table and anytime plot."""
    import optuna
    from tqdm import tqdm

    from rlhpo.agents.bench import BenchSettings, run_bench
    from rlhpo.agents.evaluate import pm
    from rlhpo.agents.tuners import METHODS

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per Optuna trial otherwise
    settings = BenchSettings(
        tasks=tasks,
        methods=methods or METHODS,
        budgets=budgets,
        seeds=seeds,
        first_seed=first_seed,
        backend=backend,
        store=str(store) if store else None,
        policy=str(policy) if policy else None,
        family=family,
        n_train=n_train,
        data_dir=str(data_dir) if data_dir else None,
        device=device,
    )
    with tqdm(desc="bench episodes", unit="ep", disable=as_json) as bar:
        summary = run_bench(settings, out_dir, progress=lambda row: bar.update(1))
    if as_json:
        click.echo(json.dumps(summary))
        return
    report = summary["report"]
    b = settings.reference_budget if settings.reference_budget in budgets else max(budgets)
    click.echo(f"{'method':<14} {'regret @ ' + format(b, 'g') + ' FTE':<18} {'area':<16} {'mean rank':<9}")
    for m, e in report["methods"].items():
        click.echo(f"{m:<14} {pm(e['regret'].get(b)):<18} {pm(e.get('area')):<16} {e['mean_rank'] or 0:<9.2f}")
    click.echo(f"bench folder {summary['run_dir']} (bench.csv, bench.md, bench.png)")


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
    for ep in episodes:
        click.echo(f"episode {ep.index}  task {ep.task}  seed {ep.seed}")
        click.echo(f"  {'step':>4}  {'config':<48} {'epochs':>6} {'score':>7} {'reward':>7} {'incumbent':>9}")
        for r in replay.episode_rows(ep):
            score = "-" if r["score"] is None else f"{r['score']:.4f}"
            click.echo(
                f"  {r['step']:>4}  {r['config']:<48} {r['epochs']:>6} {score:>7} {r['reward']:>7.4f} "
                f"{r['incumbent']:>9.4f}"
            )
    if episode is None:
        click.echo("choices by task modality/family (share of trials):")
        for h, groups in replay.choice_counts(rollouts).items():
            for group, counts in sorted(groups.items()):
                total = sum(counts.values())
                shares = ", ".join(f"{v} {n / total:.0%}" for v, n in counts.most_common())
                click.echo(f"  {h:<14} {group:<18} {shares}")
    if plot_path is not None:
        click.echo(f"plot {replay.plot(rollouts, plot_path, episodes)}")
    if verify:
        checks = replay.verify(rollouts, episode=episode, data_dir=data_dir)
        for c in checks:
            status = (
                "match"
                if c.ok
                else "MISMATCH "
                + "; ".join(f"{k}: recorded {a!r}, replayed {b!r}" for k, (a, b) in c.differences.items())
            )
            click.echo(f"verify episode {c.episode} step {c.step}: {status}")
        bad = sum(not c.ok for c in checks)
        n_eps = len({c.episode for c in checks})
        click.echo(
            f"verified {len(checks)} steps of {n_eps} episodes: " + ("all match" if not bad else f"{bad} differ")
        )
        if bad:
            raise SystemExit(1)
