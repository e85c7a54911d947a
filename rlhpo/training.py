"""The trainer: train one model with one config on one task, and return its curve.

Choices, and why:

- **A plain loop, no DataLoader.** The task's tensors are moved to the device once; each epoch
  slices a permutation drawn from a ``torch.Generator`` seeded with ``seed``. The trainer then
  costs what a bare torch loop costs (``benchmarks/throughput.py`` measures it). A last batch of
  a single example is merged into the one before, since BatchNorm cannot train on one example.
- **Same seed, same curve, without touching the caller's RNG.** The run happens inside
  ``torch.random.fork_rng``, with the CPU generator (and the CUDA one of the device in use)
  seeded from ``seed``: model initialisation and dropout are repeatable, and the caller's global
  RNG state is as it was afterwards. ``on_epoch`` runs in a fork of its own, so a callback that
  draws random numbers cannot change the run. On CPU two runs are bit-identical (except
  ``seconds``); on CUDA, kernels may be nondeterministic.
- **Divergence is a result, not an error.** A non-finite batch loss stops training at once; so
  does a non-finite weight or validation metric after an epoch. The curve keeps the completed
  epochs and ``diverged`` is True; nothing NaN is ever recorded.
- **A run can be continued.** ``keep_state=True`` leaves the model, optimizer, batch-order
  generator and RNG state in ``Curve.state``; passing that as ``resume`` trains on from there,
  and the curve is bit-identical (on CPU) to one longer run. Multi-fidelity tuners use it to
  take a 1-epoch trial on to 3 and 9 epochs without paying again for the first.
- **Test metrics** (``evaluate_test=True``) come from the final model. When the run diverged, or
  the final model's test metrics are not finite, they are those of a model that outputs all-zero
  logits: it predicts class 0 for every example, with uniform probabilities, so the loss is
  log(n_classes). Those are real, chance-level figures computed on the test split.
- Optimizers: ``sgd`` (momentum 0.9), ``adam``, ``adamw`` and ``rmsprop``, each with the
  config's learning rate and weight decay. The learning rate is taken as given, not checked
  against the search space. Loss: cross-entropy. Evaluation: batches of 512, ``model.eval()``,
  ``torch.inference_mode``.
- **Freed memory is kept for reuse** (glibc, i.e. Linux: :func:`keep_freed_memory`). By default
  glibc hands every allocation over 32 MB straight to the kernel and back when freed, and the
  kernel zeroes its pages again at each new one. ``bow``'s first layer has a dense gradient as
  large as its term table (hundreds of MB at full size), allocated at every batch, so most of a
  run went to the kernel: on whole-split imdb at 128 tokens, 1 x 256 units, batch 16, one epoch
  took 40 s, 25 s of them system time, and takes 16 s with the memory kept; the same curve to the
  last bit, for 8-27% more peak memory (``docs/benchmarks/allocator.md``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rlhpo.errors import RlhpoError, unknown
from rlhpo.metrics import accuracy, macro_f1
from rlhpo.models import model_for
from rlhpo.space import OPTIMIZERS, Config

if TYPE_CHECKING:
    from rlhpo.tasks.task import TaskData

logger = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 512
SGD_MOMENTUM = 0.9
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's allocator keep freed memory for reuse (module docstring); True where it did.

    Once per process: every :func:`train` calls it, only the first call loads libc and sets it.

    Two ``mallopt`` settings of glibc: no allocation is served by its own ``mmap`` (so none is
    handed back to the kernel when freed), and the heap's free top is never trimmed. A process
    setting, like ``torch.set_num_threads``; it changes speed and peak memory, never a result.
    Elsewhere (macOS, Windows, musl) it does nothing and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


@dataclass(frozen=True)
class EpochRecord:
    """Metrics after one epoch. ``seconds`` is that epoch's wall time (training + validation)."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    seconds: float


@dataclass(frozen=True)
class TestMetrics:
    accuracy: float
    macro_f1: float
    loss: float


@dataclass
class TrainState:
    """Where a run stopped: what continuing it needs (see :func:`train`'s ``resume``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    order: torch.Generator  # the batch-order stream
    rng: torch.Tensor  # the CPU generator's state (dropout)
    cuda_rng: torch.Tensor | None  # the device generator's state, on CUDA


@dataclass
class Curve:
    """A training run: one record per completed epoch.

    When a loss or weight becomes non-finite, training stops and ``diverged`` is True; the
    epochs completed before stay in ``epochs`` (possibly none). No metric is ever NaN.
    ``state`` is the run's end state when it was asked for (``keep_state``); it is never saved.
    """

    epochs: list[EpochRecord] = field(default_factory=list)
    diverged: bool = False
    test: TestMetrics | None = None
    state: TrainState | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [asdict(e) for e in self.epochs],
            "diverged": self.diverged,
            "test": asdict(self.test) if self.test else None,
        }


def train(
    data: TaskData,
    config: Config,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    evaluate_test: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    resume: Curve | None = None,
    keep_state: bool = False,
) -> Curve:
    """Train a fresh model of ``data.family`` sized by ``config`` and return its curve.

    Args:
        data: the loaded task (train / validation / test tensors).
        config: the hyperparameters; its ``epochs`` is used unless ``epochs`` is given.
        epochs: number of epochs to train, overriding ``config.epochs``.
        seed: seeds model initialisation, dropout and the batch order.
        device: a torch device string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
        evaluate_test: also fill ``Curve.test`` from the final model on the test split.
        on_epoch: called with each epoch's record as soon as it is complete.
        resume: a curve of this data, config and seed made with ``keep_state=True``: training
            continues from its last epoch up to ``epochs`` (the returned curve holds them all;
            ``on_epoch`` sees only the new ones). The state is taken over, not copied.
        keep_state: leave the end state in the returned curve's ``state``.

    Raises:
        RlhpoError: for an unavailable device or unusable input; never for divergence.
    """
    dev = resolve_device(device)
    n_epochs = config.epochs if epochs is None else epochs
    _check_inputs(data, config, n_epochs, evaluate_test)
    keep_freed_memory()
    if resume is not None and (resume.state is None or resume.diverged or len(resume.epochs) > n_epochs):
        raise RlhpoError(
            "resume needs a curve made with keep_state=True that did not diverge and has at most "
            f"{n_epochs} epochs, but got {len(resume.epochs)} epochs (diverged={resume.diverged}, "
            f"state kept={resume.state is not None})."
        )
    with _seeded_rng(seed, dev):
        return _run(data, config, n_epochs, seed, dev, evaluate_test, on_epoch, resume, keep_state)


def train_final(
    data: TaskData,
    config: Config,
    *,
    seed: int = 0,
    device: str = "cpu",
    reuse: Curve | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Curve:
    """The final training of a chosen config: trained for ``config.epochs``, then tested on the test split.

    ``reuse`` is a curve of this very training (same data, config and seed) that is
    :func:`reusable`: the test metrics come from its model, with no training again.
    """
    if reuse is not None:
        if not reusable(reuse, config):
            raise RlhpoError(f"The curve given to reuse is not a finished run of {config} with its model kept.")
        test = _test_metrics(reuse.state.model, data, resolve_device(device), diverged=False)  # type: ignore[union-attr]
        return Curve(epochs=list(reuse.epochs), diverged=False, test=test)
    return train(data, config, seed=seed, device=device, evaluate_test=True, on_epoch=on_epoch)


def reusable(curve: Curve, config: Config) -> bool:
    """Whether ``curve`` can stand for the final training of ``config``: all its epochs, with the model kept."""
    return curve.state is not None and not curve.diverged and len(curve.epochs) == config.epochs


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a string, or an RlhpoError if it is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RlhpoError(f"Unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise RlhpoError(f"Unsupported device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'.")
    if not torch.cuda.is_available():
        raise RlhpoError(f"Device {device!r} was asked for, but CUDA is not available here; use device='cpu'.")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise RlhpoError(f"Device {device!r} does not exist: there are {torch.cuda.device_count()} CUDA devices.")
    return torch.device("cuda", index)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """One of :data:`rlhpo.space.OPTIMIZERS`; ``sgd`` uses momentum 0.9.

    SGD, Adam and AdamW use torch's fused kernels (CPU and CUDA): the same update, to float
    rounding, in one pass over each parameter. It matters for ``bow``, whose embedding table of
    millions of weights gets a dense update every step: Adam's step there is 4.9x faster fused
    (3.6 s against 0.75 s for 3 epochs of ag_news at 500 examples), with the same curve.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise unknown("optimizer", name, OPTIMIZERS)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch over ``n`` examples; a trailing batch of one is merged."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _check_inputs(data: TaskData, config: Config, n_epochs: int, evaluate_test: bool) -> None:
    if n_epochs < 0 or config.batch_size < 1:
        raise RlhpoError(f"Training needs epochs >= 0 and batch_size >= 1, but got {n_epochs=}, {config.batch_size=}.")
    for split in ("train", "val", "test") if evaluate_test else ("train", "val"):
        if len(getattr(data, f"y_{split}")) == 0:
            raise RlhpoError(f"Task {data.task.key()} has an empty {split} split, but it needs examples.")


def _forked_rng(dev: torch.device) -> contextlib.AbstractContextManager:
    """Restore the CPU generator (and ``dev``'s, if CUDA) on exit."""
    return torch.random.fork_rng(devices=[dev.index] if dev.type == "cuda" else [], device_type="cuda")


@contextlib.contextmanager
def _seeded_rng(seed: int, dev: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``dev``'s, if CUDA) inside a fork: the caller's state is kept."""
    with _forked_rng(dev):
        torch.default_generator.manual_seed(seed)
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        yield


def _run(
    data: TaskData,
    config: Config,
    n_epochs: int,
    seed: int,
    dev: torch.device,
    evaluate_test: bool,
    on_epoch: Callable[[EpochRecord], None] | None,
    resume: Curve | None,
    keep_state: bool,
) -> Curve:
    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev).long()
    x_val, y_val = data.x_val.to(dev), data.y_val.to(dev).long()
    if resume is not None and resume.state is not None:
        state = resume.state
        model, optimizer, order = state.model, state.optimizer, state.order
        torch.set_rng_state(state.rng)
        if state.cuda_rng is not None:
            with torch.cuda.device(dev):
                torch.cuda.set_rng_state(state.cuda_rng)
        curve = Curve(epochs=list(resume.epochs))
        resume.state = None  # taken over: the old curve can no longer be continued
    else:
        model = model_for(data, config).to(dev)
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.learning_rate, config.weight_decay)
        order = torch.Generator().manual_seed(seed)  # batch order: its own stream, on CPU on every device
        curve = Curve()
    for epoch in range(len(curve.epochs) + 1, n_epochs + 1):
        start = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, x_train, y_train, config.batch_size, order)
        ok = train_loss is not None and math.isfinite(train_loss) and _weights_finite(model)
        val = _evaluate(model, x_val, y_val, data.n_classes) if ok else None
        if val is None:
            curve.diverged = True
            logger.debug("Diverged in epoch %d of %s with %s.", epoch, data.task.key(), config)
            break
        record = EpochRecord(epoch, train_loss, val[0], val[1], val[2], time.perf_counter() - start)
        curve.epochs.append(record)
        logger.debug("%s epoch %d: %s", data.task.key(), epoch, record)
        if on_epoch is not None:
            with _forked_rng(dev):
                on_epoch(record)
    if evaluate_test:
        curve.test = _test_metrics(model, data, dev, curve.diverged)
    if keep_state and not curve.diverged:
        cuda_rng = None
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                cuda_rng = torch.cuda.get_rng_state()
        curve.state = TrainState(model, optimizer, order, torch.get_rng_state(), cuda_rng)
    return curve


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    order: torch.Generator,
) -> float | None:
    """Mean batch loss of one epoch, or None as soon as a batch loss is not finite."""
    model.train()
    perm = torch.randperm(len(y), generator=order).to(x.device)
    bounds = batch_bounds(len(y), batch_size)
    total = 0.0
    for start, stop in bounds:
        idx = perm[start:stop]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        value = loss.item()
        if not math.isfinite(value):
            return None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value
    return total / len(bounds)


def _weights_finite(model: nn.Module) -> bool:
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


@torch.inference_mode()
def _evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, n_classes: int
) -> tuple[float, float, float] | None:
    """(mean loss, accuracy, macro-F1) of ``predict`` in batches, or None if any is not finite."""
    if isinstance(predict, nn.Module):
        predict.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    preds = []
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        logits = predict(x[start : start + EVAL_BATCH_SIZE]).float()
        loss_sum += F.cross_entropy(logits, y[start : start + EVAL_BATCH_SIZE], reduction="sum")
        preds.append(logits.argmax(dim=1))
    pred = torch.cat(preds)
    result = (loss_sum.item() / len(y), accuracy(pred, y), macro_f1(pred, y, n_classes))
    return result if all(math.isfinite(v) for v in result) else None


def _test_metrics(model: nn.Module, data: TaskData, dev: torch.device, diverged: bool) -> TestMetrics:
    x_test, y_test = data.x_test.to(dev), data.y_test.to(dev).long()
    result = None if diverged else _evaluate(model, x_test, y_test, data.n_classes)
    if result is None:
        if not diverged:
            logger.warning("Test metrics of %s are not finite; reporting those of a constant model.", data.task.key())
        result = _evaluate(_constant_logits(data.n_classes), x_test, y_test, data.n_classes)
        assert result is not None  # zero logits give finite metrics
    loss, acc, f1 = result
    return TestMetrics(accuracy=acc, macro_f1=f1, loss=loss)


def _constant_logits(n_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stand-in for a diverged model: all-zero logits, so it predicts class 0 with loss log(n_classes)."""
    return lambda x: torch.zeros(len(x), n_classes, device=x.device)
