"""Model families, each built from the hyperparameters ``num_layers``, ``units`` and ``dropout``.

- ``cnn`` (images ``(C, H, W)``): ``num_layers`` blocks of conv3x3 → BatchNorm → ReLU →
  MaxPool2 (pooling skipped once the feature map is smaller than 2), global average pool,
  dropout, linear.
- ``mlp`` (any input, flattened): ``num_layers`` × [Linear(units), ReLU, Dropout], linear.
- ``gru`` / ``lstm`` (token ids ``(L,)``, 0 = padding): embedding, dropout, a unidirectional
  ``num_layers`` RNN, mean over the non-padding positions, dropout, linear. Unidirectional
  because text is right-padded: its outputs at real tokens never see the padding, so no
  packing is needed, and it costs half a bidirectional RNN on CPU.
- ``transformer`` (token ids): a randomly initialised ``transformers`` BERT encoder sized by
  the hyperparameters, mean over the non-padding positions, linear.
- ``bow`` (token ids): fastText-style. One ``EmbeddingBag`` of ``units``-wide vectors holds the
  ``vocab_size`` token ids and ``BOW_BUCKETS`` (2**16) hashed bigram buckets; a text is the mean of
  the embeddings of its tokens and of its bigrams (adjacent pairs of real tokens ``a, b``, bucket
  ``(a * 116049371 + b) mod 2**16``, fastText's multiplier), padding excluded. Then
  ``num_layers`` × [Linear(units), ReLU, Dropout], linear. Bigram ids are computed from the
  token ids in ``forward``, so the tasks need nothing new.
- ``textcnn`` (token ids): Kim (2014). A ``units``-wide embedding; three parallel branches of
  Conv1d with ``units`` channels and widths 3, 4 and 5, each followed by ReLU; each further layer
  (``num_layers`` > 1) is one more width-3, same-padded Conv1d + ReLU on every branch. Then max
  over time, concatenation (3 × units), dropout, linear. Every window starts at a token: the
  embedded text gets 4 zero positions on the right, so texts shorter than 5 tokens work, and
  positions at padding are zeroed after each layer, so padding changes no logit.

Text embeddings are ``units`` wide in every text family, as in the RNNs.

Weights are initialised from torch's global RNG: seed it (the trainer does) for repeatable models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rlhpo.errors import RlhpoError, unknown
from rlhpo.tasks.task import FAMILIES_BY_MODALITY

if TYPE_CHECKING:
    from rlhpo.space import Config
    from rlhpo.tasks.task import TaskData

FAMILIES = tuple(dict.fromkeys(f for listed in FAMILIES_BY_MODALITY.values() for f in listed))
TEXT_FAMILIES = FAMILIES_BY_MODALITY["text"]
PAD_ID = 0
BOW_BUCKETS = 2**16  # hashed bigram buckets of ``bow``
BIGRAM_MULTIPLIER = 116049371  # fastText's n-gram hash multiplier
TEXTCNN_WIDTHS = (3, 4, 5)


def build_model(
    family: str,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    vocab_size: int | None,
    num_layers: int,
    units: int,
    dropout: float,
) -> nn.Module:
    """A freshly initialised classifier of one family; it maps a batch of inputs to logits."""
    if family not in FAMILIES:
        raise unknown("model family", family, FAMILIES)
    if num_layers < 1 or units < 1 or not 0.0 <= dropout < 1.0 or n_classes < 2:
        raise RlhpoError(
            f"A model needs num_layers >= 1, units >= 1, 0 <= dropout < 1 and n_classes >= 2, "
            f"but got {num_layers=}, {units=}, {dropout=}, {n_classes=}."
        )
    if family == "cnn":
        _check_shape(family, input_shape, 3, "images (channels, height, width)")
        return ConvNet(input_shape, n_classes, num_layers, units, dropout)
    if family == "mlp":
        return MLP(math.prod(input_shape), n_classes, num_layers, units, dropout)
    _check_shape(family, input_shape, 1, "token ids (sequence length,)")
    if vocab_size is None or vocab_size < 2:
        raise RlhpoError(f"Family {family!r} needs a vocabulary of at least 2 token ids, but got {vocab_size=}.")
    if family == "transformer":
        return _bert_classifier(input_shape[0], vocab_size, n_classes, num_layers, units, dropout)
    if family == "bow":
        return BagOfNgrams(vocab_size, n_classes, num_layers, units, dropout)
    if family == "textcnn":
        return TextCNN(vocab_size, n_classes, num_layers, units, dropout)
    return RNNClassifier(family, vocab_size, n_classes, num_layers, units, dropout)


def model_family(data: TaskData, config: Config) -> str:
    """The family a config trains on a task: its own, else the task's; an error names the valid ones."""
    family = config.family or data.family
    valid = FAMILIES_BY_MODALITY[data.modality]
    if family not in valid:
        raise unknown(f"family for {data.modality} data", family, valid)
    return family


def model_for(data: TaskData, config: Config) -> nn.Module:
    """The model of a task sized by a config: of the config's family, else of the task's (``data.family``).

    Raises:
        RlhpoError: for a family that does not take the task's modality, naming those that do.
    """
    family = model_family(data, config)
    return build_model(
        family,
        input_shape=data.input_shape,
        n_classes=data.n_classes,
        vocab_size=data.vocab_size,
        num_layers=config.num_layers,
        units=config.units,
        dropout=config.dropout,
    )


def _check_shape(family: str, shape: tuple[int, ...], ndim: int, what: str) -> None:
    if len(shape) != ndim:
        raise RlhpoError(f"Family {family!r} takes {what} per example, but got input shape {shape}.")


class ConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for _ in range(num_layers):
            blocks += [nn.Conv2d(channels, units, 3, padding=1, bias=False), nn.BatchNorm2d(units), nn.ReLU()]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = units
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(units, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(num_layers):
            layers += [nn.Linear(n_inputs if i == 0 else units, units), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(units, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, L, D) over the positions where ``mask`` (N, L) is true."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class RNNClassifier(nn.Module):
    def __init__(self, cell: str, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        rnn_type = nn.GRU if cell == "gru" else nn.LSTM
        self.embed = nn.Embedding(vocab_size, units, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        # Dropout between stacked layers; torch warns when it is set on a single layer.
        self.rnn = rnn_type(units, units, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(units, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.dropout(self.embed(tokens)))
        return self.head(self.dropout(masked_mean(hidden, tokens != PAD_ID)))


def bigram_ids(tokens: torch.Tensor, vocab_size: int, buckets: int = BOW_BUCKETS) -> torch.Tensor:
    """Ids ``vocab_size + hash(a, b)`` of the bigrams of ``tokens`` (N, L): (N, L - 1), padding 0.

    A bigram is padding (0) when either of its tokens is; the others get bucket
    ``(a * BIGRAM_MULTIPLIER + b) mod buckets``, offset past the token ids.
    """
    first, second = tokens[:, :-1], tokens[:, 1:]
    ids = vocab_size + (first * BIGRAM_MULTIPLIER + second) % buckets
    return torch.where((first != PAD_ID) & (second != PAD_ID), ids, PAD_ID)


class BagOfNgrams(nn.Module):
    """The ``bow`` family; ``pool`` (``mean`` or ``sum``) and ``buckets`` are fixed for it, and free for probes."""

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        num_layers: int,
        units: int,
        dropout: float,
        *,
        pool: str = "mean",
        buckets: int = BOW_BUCKETS,
    ):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        # mode="mean" leaves padding_idx entries out of the mean; an all-padding text gives zeros.
        self.embed = nn.EmbeddingBag(vocab_size + buckets, units, mode=pool, padding_idx=PAD_ID)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(units, units), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(units, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag = torch.cat([tokens, bigram_ids(tokens, self.vocab_size, self.buckets)], dim=1)
        return self.net(self.embed(bag))


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, units, padding_idx=PAD_ID)
        self.branches = nn.ModuleList(
            nn.ModuleList(
                [nn.Conv1d(units, units, width)]
                + [nn.Conv1d(units, units, 3, padding=1) for _ in range(num_layers - 1)]
            )
            for width in TEXTCNN_WIDTHS
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(TEXTCNN_WIDTHS) * units, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        embedded = self.embed(tokens).transpose(1, 2)  # (N, units, L)
        mask = (tokens != PAD_ID).unsqueeze(1).to(embedded.dtype)  # (N, 1, L)
        # (N, units, L + 4): zeros on the right, so that a window starts at every token.
        x = F.pad(embedded * mask, (0, max(TEXTCNN_WIDTHS) - 1))
        pooled = []
        for convs in self.branches:
            h = torch.relu(convs[0](x))[:, :, :length] * mask
            for conv in convs[1:]:
                h = torch.relu(conv(h)) * mask
            pooled.append(h.amax(dim=2))  # h >= 0 and padding is 0: the max over the real tokens
        return self.head(torch.cat(pooled, dim=1))


class BertClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, units: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(units, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != PAD_ID
        hidden = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return self.head(masked_mean(hidden, mask))


def _bert_classifier(
    seq_len: int, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float
) -> nn.Module:
    from transformers import BertConfig, BertModel  # slow to import (~3 s): only when needed

    heads = max(1, units // 32)
    if units % heads:
        raise RlhpoError(f"A transformer needs units divisible by its {heads} heads (units // 32), but got {units=}.")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=units,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=2 * units,
        max_position_embeddings=seq_len,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=PAD_ID,
    )
    return BertClassifier(BertModel(config, add_pooling_layer=False), units, n_classes)
