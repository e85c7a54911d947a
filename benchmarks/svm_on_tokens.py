"""Is it the input? The TF-IDF + LinearSVC baseline on rlhpo's own text input, next to it on words.

``linear_baseline.py`` fits the SVM on words. rlhpo's text families read BPE token ids
(:func:`rlhpo.tasks.preprocess.tokenize`: a tokenizer trained on the train split, its vocabulary
size from the dataset's spec), cut at the dataset's sequence length (the 90th percentile of the
training texts' token counts, capped). This fits the same SVM (``TfidfVectorizer(ngram_range=(1, 2),
sublinear_tf=True)`` + ``LinearSVC(C=0.5)``, each token id a "word") on three inputs, always on the
whole local train split (what ``rlhpo tune`` refits on), tested on the test split:

1. words (``linear_baseline.py``'s input);
2. BPE ids, every token of every text;
3. BPE ids cut at the sequence length: exactly what rlhpo's models see.

Between 1 and 2 is the tokenizer; between 2 and 3 the cut. Usage::

    python benchmarks/svm_on_tokens.py --data-dir <data folder> --out docs/benchmarks/svm_on_tokens.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from linear_baseline import TEXT_DATASETS, read_split, svm_accuracy
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from rlhpo.tasks import BUILTINS, Task, load_task
from rlhpo.tasks.preprocess import train_tokenizer


def as_words(ids: list[list[int]] | np.ndarray) -> list[str]:
    """Token id sequences as space-separated "words" (padding dropped), for the vectorizer."""
    return [" ".join(str(int(t)) for t in row if t > 0) for row in ids]


def ids_accuracy(x_train: list[str], y_train: np.ndarray, x_test: list[str], y_test: np.ndarray) -> float:
    """``svm_accuracy`` on id "words": every id is a term (the default token pattern drops ids under 10)."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+")
    model = LinearSVC(C=0.5).fit(vectorizer.fit_transform(x_train), y_train)
    return float((model.predict(vectorizer.transform(x_test)) == y_test).mean())


def row(data_dir: Path, name: str) -> str:
    texts, labels = read_split(data_dir, name, "train")
    test_texts, test_labels = read_split(data_dir, name, "test")
    spec = BUILTINS[name]
    tokenizer = train_tokenizer(texts, spec.vocab_size or 10_000)
    whole = as_words([e.ids for e in tokenizer.encode_batch(texts)])
    whole_test = as_words([e.ids for e in tokenizer.encode_batch(test_texts)])
    data = load_task(Task(name), data_dir=data_dir)  # rlhpo's arrays: the same tokenizer, cut
    seq_len = data.x_test.shape[1]
    first = tokenizer.encode(test_texts[0]).ids[:seq_len]
    assert data.x_test[0, : len(first)].tolist() == first, f"{name}: not the tokenizer rlhpo's arrays were made with"
    order = np.concatenate([data.x_train.numpy(), data.x_val.numpy()])
    cut_labels = np.concatenate([data.y_train.numpy(), data.y_val.numpy()])
    on_words = svm_accuracy(texts, labels, test_texts, test_labels)
    on_ids = ids_accuracy(whole, labels, whole_test, test_labels)
    on_cut = ids_accuracy(as_words(order), cut_labels, as_words(data.x_test.numpy()), data.y_test.numpy())
    return f"| {name} | {data.vocab_size} | {data.x_train.shape[1]} | {on_words:.4f} | {on_ids:.4f} | {on_cut:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "# TF-IDF + LinearSVC on words and on rlhpo's tokens",
        "",
        f"Made by `python benchmarks/svm_on_tokens.py {shlex.join(sys.argv[1:])}`. Fit on the whole local train "
        "split, test accuracy on the test split.",
        "",
        "| dataset | BPE vocabulary | sequence length | words | BPE ids, whole texts | BPE ids, cut (rlhpo's input) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in TEXT_DATASETS:
        lines.append(row(args.data_dir, name))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
