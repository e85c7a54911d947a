"""Tasks: loading the built-in and user datasets, splits, the cache, meta-features, the sampler."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch

from rlhpo.errors import RlhpoError
from rlhpo.tasks import (
    FAMILIES_BY_MODALITY,
    META_FEATURES,
    Task,
    TaskData,
    TaskSampler,
    get_spec,
    list_datasets,
    load_task,
    meta_feature_vector,
    meta_features,
)
from rlhpo.tasks import preprocess as preprocess_module
from rlhpo.tasks.loader import load_prepared
from rlhpo.tasks.splits import split_indices, stratified_choice

BUILTIN_FILES = ("mnist", "cifar10", "imdb", "ag_news", "trec")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, private preprocessing cache (for datasets that exist only in this test)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RLHPO_CACHE_DIR", str(cache))
    return cache / "datasets"


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


@pytest.mark.parametrize("name", BUILTIN_FILES)
def test_builtin_dataset_loads_from_the_data_folder(data_dir: Path, name: str) -> None:
    spec = get_spec(name)
    data = load_task(Task(name, n_train=300, seed=1), data_dir=data_dir)

    assert data.source == f"local:{data_dir / name}"
    assert (data.modality, data.family, data.n_classes) == (spec.modality, spec.family, spec.n_classes)
    n_split = _rows(data_dir / name / "train.parquet")
    assert len(data.x_train) == len(data.y_train) == 300
    assert len(data.x_val) == len(data.y_val) == min(round(0.15 * n_split), 1000)
    assert len(data.x_test) == len(data.y_test) == _rows(data_dir / name / "test.parquet")
    for y in (data.y_train, data.y_val, data.y_test):
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < data.n_classes
    assert set(data.y_train.tolist()) == set(range(data.n_classes))  # stratified: every class is there
    if data.modality == "image":
        _check_images(data)
    else:
        _check_text(data, spec.max_len)


def _check_images(data: TaskData) -> None:
    assert data.x_train.dtype == torch.float32 and data.x_train.ndim == 4
    assert data.input_shape in ((1, 28, 28), (3, 32, 32))
    mean, std = data.x_train.mean(dim=(0, 2, 3)), data.x_train.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=0.15), mean
    assert torch.allclose(std, torch.ones_like(std), atol=0.15), std


def _check_text(data: TaskData, max_len: int | None) -> None:
    assert data.x_train.dtype == torch.int64 and data.x_train.ndim == 2
    assert max_len is not None and 8 <= data.input_shape[0] <= max_len
    assert data.vocab_size is not None and data.vocab_size > 1000
    x = torch.cat([data.x_train, data.x_val, data.x_test])
    assert int(x.min()) >= 0 and int(x.max()) < data.vocab_size
    tokens = x != 0
    assert not (tokens[:, 1:] & ~tokens[:, :-1]).any(), "id 0 must only pad the end of a sequence"
    assert (~tokens[:, -1]).any(), "some sequences are shorter than the length, so padded"


@pytest.mark.parametrize("name", ["mnist", "trec"])
def test_same_seed_same_task_other_seed_other_sample(data_dir: Path, name: str) -> None:
    first = load_task(Task(name, n_train=200, seed=5), data_dir=data_dir)
    again = load_task(Task(name, n_train=200, seed=5), data_dir=data_dir)
    other = load_task(Task(name, n_train=200, seed=6), data_dir=data_dir)

    for field in ("x_train", "y_train", "x_val", "y_val", "x_test"):
        assert torch.equal(getattr(first, field), getattr(again, field))
    assert not torch.equal(first.x_train, other.x_train)
    assert not torch.equal(first.x_val, other.x_val)
    assert torch.equal(first.x_test, other.x_test)  # the test split is the dataset's own


def test_mnist_train_val_and_test_share_no_image(data_dir: Path) -> None:
    data = load_task(Task("mnist", n_train=2000, seed=3), data_dir=data_dir)

    def rows(x: torch.Tensor) -> set[bytes]:
        return {r.tobytes() for r in x.flatten(1).numpy()}

    train, val, test = rows(data.x_train), rows(data.x_val), rows(data.x_test)
    assert len(train) == 2000
    assert not train & val and not train & test and not val & test


def test_split_indices_are_disjoint_stratified_and_val_ignores_n_train() -> None:
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    train, val = split_indices(y, seed=0, n_train=100)
    train_all, val_all = split_indices(y, seed=0, n_train=None)

    assert len(val) == 150 and len(train) == 100
    assert not set(train) & set(val)
    assert np.array_equal(np.sort(val), np.sort(val_all))  # the validation split depends on the seed only
    assert set(train_all) == set(range(len(y))) - set(val_all)
    assert np.bincount(y[train]).tolist() == [10, 20, 30, 40]
    assert np.bincount(y[val]).tolist() == [15, 30, 45, 60]
    assert len(split_indices(np.zeros(20_000, int), seed=0, n_train=None)[1]) == 1000  # capped


def test_stratified_choice_keeps_rare_classes_and_exact_size() -> None:
    y = np.array([0] * 97 + [1] * 3)
    picked = stratified_choice(y, 34, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 34
    assert np.bincount(y[picked]).tolist() == [33, 1]


def test_digits_loads_offline_without_a_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLHPO_DATA_DIR", raising=False)
    data = load_task(Task("digits", n_train=200, seed=0))

    assert data.source == "bundled:sklearn"
    assert (data.modality, data.family, data.n_classes) == ("tabular", "mlp", 10)
    assert data.x_train.shape == (200, 64) and data.x_train.dtype == torch.float32
    assert len(data.x_test) == 360  # the fixed 20% of 1797
    assert abs(float(data.x_train.mean())) < 0.1


def test_n_train_beyond_the_rows_left_is_warned_and_recorded_as_the_real_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="rlhpo.tasks"):
        data = load_task(Task("digits", n_train=100_000))

    assert len(data.x_train) == data.task.n_train == 1221  # 1437 train rows, less 216 for validation
    assert data.task.key() == Task("digits", n_train=1221).key() == "digits/default/n1221/call/s0"
    assert "n_train=100000, but only 1221 training examples are left" in caplog.text
    assert load_task(Task("digits", n_train=200)).task == Task("digits", n_train=200)  # enough rows: as asked


def test_class_subset_keeps_those_classes_relabelled_in_the_order_given(data_dir: Path) -> None:
    full = load_task(Task("mnist", seed=0), data_dir=data_dir)
    data = load_task(Task("mnist", n_train=100, classes=(7, 3), seed=0), data_dir=data_dir)

    assert data.class_names == ("7", "3") and data.n_classes == 2
    assert set(data.y_train.tolist()) == {0, 1}
    counts = torch.bincount(full.y_test, minlength=10)
    assert torch.bincount(data.y_test).tolist() == [int(counts[7]), int(counts[3])]
    sevens = {r.tobytes() for r in full.x_test[full.y_test == 7].flatten(1).numpy()}
    assert all(r.tobytes() in sevens for r in data.x_test[data.y_test == 0].flatten(1).numpy())


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (Task("mnsit"), "Did you mean 'mnist'"),
        (Task("mnist", family="gru"), "expected one of cnn, mlp"),
        (Task("trec", family="lstn"), "Did you mean 'lstm'"),
        (Task("mnist", classes=(3, 12)), "label ids in 0..9"),
        (Task("mnist", classes=(3,)), "at least 2"),
        (Task("mnist", n_train=0), "n_train must be a positive integer"),
    ],
)
def test_bad_task_values_raise_a_helpful_error(data_dir: Path, task: Task, message: str) -> None:
    with pytest.raises(RlhpoError, match=message):
        load_task(task, data_dir=data_dir)


def test_trec_fine_is_the_50_fine_question_types_read_from_the_trec_folder(data_dir: Path, tmp_path: Path) -> None:
    fine = load_task(Task("trec_fine", n_train=300, seed=1), data_dir=data_dir)
    coarse = load_task(Task("trec", n_train=300, seed=1), data_dir=data_dir)
    assert fine.source == coarse.source == f"local:{data_dir / 'trec'}"
    assert (fine.n_classes, coarse.n_classes) == (50, 6)
    rows = pq.read_table(data_dir / "trec" / "test.parquet").column("fine_label").to_pylist()
    assert sorted(fine.y_test.tolist()) == sorted(rows)  # the fine labels, not the coarse ones
    with pytest.raises(RlhpoError, match="DIR/trec/train.parquet"):
        load_task(Task("trec_fine"), data_dir=tmp_path)  # an empty folder; the hub is offline in tests


def test_missing_data_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RlhpoError, match="does not exist"):
        load_task(Task("digits"), data_dir=tmp_path / "nowhere")


def test_dataset_missing_offline_names_the_three_ways_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(RlhpoError) as error:
        load_task(Task("mnist"), data_dir=tmp_path)  # an empty folder; the hub is offline in tests
    message = str(error.value)
    for way in ("--data-dir", "RLHPO_DATA_DIR", "mnist/train.parquet", "internet", "local folder path"):
        assert way in message
    assert "ylecun/mnist" in message


def test_hub_source_reads_what_datasets_load_dataset_returns(
    data_dir: Path, tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    files = {split: str(data_dir / "trec" / f"{split}.parquet") for split in ("train", "test")}
    calls = []
    real_load_dataset = datasets.load_dataset

    def fake_hub(path: str) -> object:  # the hub's answer, from the same files
        calls.append(path)
        return real_load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    from_hub = load_task(Task("trec", n_train=300, seed=1), data_dir=tmp_path)
    local = load_task(Task("trec", n_train=300, seed=1), data_dir=data_dir)

    assert calls == ["CogComp/trec"] and from_hub.source == "hub:CogComp/trec"
    assert from_hub.class_names == local.class_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
    assert torch.equal(from_hub.y_train, local.y_train) and torch.equal(from_hub.x_test, local.x_test)


def _trec_rows(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` TREC questions and their coarse labels, as strings."""
    table = pq.read_table(data_dir / "trec" / "train.parquet").slice(0, n)
    label_names = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    return table.column("text").to_pylist(), [label_names[i] for i in table.column("coarse_label").to_pylist()]


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(pa.table(columns), path)


def test_user_csv_folder_with_column_overrides(data_dir: Path, tmp_path: Path, tmp_cache: Path) -> None:
    texts, labels = _trec_rows(data_dir, 400)
    folder = tmp_path / "questions"
    _write_csv(folder / "train.csv", {"question": texts[:300], "category": labels[:300]})
    _write_csv(folder / "test.csv", {"question": texts[300:], "category": labels[300:]})

    data = load_task(Task(str(folder), text_column="question", label_column="category", n_train=100), data_dir)

    assert data.source == f"local:{folder.resolve()}"
    assert (data.modality, data.family) == ("text", "bow")
    assert data.class_names == tuple(sorted(set(labels[:300]) | set(labels[300:])))  # strings, sorted
    assert len(data.x_train) == 100 and len(data.x_val) == 45 and len(data.x_test) == 100
    assert data.vocab_size is not None and data.x_train.dtype == torch.int64
    with pytest.raises(RlhpoError, match="its columns are: question, category"):
        load_task(Task(str(folder), text_column="text", label_column="category"), data_dir)
    with pytest.raises(RlhpoError, match="its columns are: question, category"):
        load_task(Task(str(folder), text_column="question"), data_dir)  # no label/labels column


def test_user_folder_without_test_file_carves_a_test_split(data_dir: Path, tmp_path: Path, tmp_cache: Path) -> None:
    texts, labels = _trec_rows(data_dir, 200)
    folder = tmp_path / "sentences"
    _write_csv(folder / "train.csv", {"sentence": texts, "labels": labels})

    data = load_task(Task(str(folder)), data_dir)

    assert data.modality == "text" and len(data.x_test) == 40  # 20% of 200
    assert len(data.x_train) + len(data.x_val) == 160


def test_hub_name_is_read_from_the_data_folder_first(data_dir: Path, tmp_path: Path, tmp_cache: Path) -> None:
    texts, labels = _trec_rows(data_dir, 100)
    _write_csv(tmp_path / "someone" / "questions" / "train.csv", {"text": texts, "label": labels})

    data = load_task(Task("someone/questions"), data_dir=tmp_path)

    assert data.source == f"local:{tmp_path / 'someone' / 'questions'}"
    assert data.task.key().startswith("someone:questions/")


def test_user_numeric_csv_is_tabular(tmp_path: Path, tmp_cache: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=120)
    x = rng.normal(size=(120, 3)) * 10 + 5 + y[:, None]
    _write_csv(tmp_path / "t" / "train.csv", {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y})

    data = load_task(Task(str(tmp_path / "t"), seed=1))

    assert (data.modality, data.family, data.input_shape, data.n_classes) == ("tabular", "mlp", (3,), 3)
    assert abs(float(data.x_train.mean())) < 0.3


def test_second_load_reuses_the_disk_cache(data_dir: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_task(Task("trec", n_train=100), data_dir=data_dir)
    files = sorted(p.name for p in tmp_cache.iterdir())
    assert [f.split("-")[0] for f in files] == ["trec", "trec"]  # the arrays and the tokenizer, no temp files

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer was trained again instead of read from the cache")

    monkeypatch.setattr(preprocess_module, "train_tokenizer", no_training)
    load_prepared.cache_clear()  # forget the in-memory copy: the next load reads the disk
    second = load_task(Task("trec", n_train=100), data_dir=data_dir)
    assert torch.equal(first.x_train, second.x_train) and second.vocab_size == first.vocab_size


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decoded_images_have_the_strides_of_images_read_back_from_the_cache(mode: str) -> None:
    from PIL import Image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, (5, 4), value if mode == "L" else (value, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = preprocess_module.decode_images(pa.chunked_array([pa.array([png(0), png(128), png(255)])]))
    channels = 1 if mode == "L" else 3
    assert images.shape == (3, channels, 4, 5)
    # The strides np.load gives the cached arrays; a single channel must not look channels-last.
    assert images.strides == (channels * 20, 20, 5, 1)
    assert torch.from_numpy(images).float().stride() == (channels * 20, 20, 5, 1)


def test_a_corrupt_cache_file_is_rebuilt(data_dir: Path, tmp_cache: Path) -> None:
    first = load_task(Task("trec", n_train=50), data_dir=data_dir)
    (npz,) = tmp_cache.glob("*.npz")
    npz.write_bytes(b"not a zip file")
    load_prepared.cache_clear()

    again = load_task(Task("trec", n_train=50), data_dir=data_dir)

    assert torch.equal(first.x_train, again.x_train)
    assert npz.stat().st_size > 1000


@pytest.mark.parametrize("name", ["mnist", "trec", "digits"])
def test_meta_features_lie_in_unit_interval(data_dir: Path, name: str) -> None:
    data = load_task(Task(name, n_train=250), data_dir=data_dir)
    features = meta_features(data)
    vector = meta_feature_vector(data)

    assert tuple(features) == META_FEATURES
    assert vector.dtype == np.float32 and vector.shape == (len(META_FEATURES),)
    assert np.all((vector >= 0) & (vector <= 1))
    assert sum(v for k, v in features.items() if k.startswith("modality_")) == 1
    assert features[f"modality_{data.modality}"] == 1
    # The task's family, one-hot over the families with a slot; trec's own (bow) has none.
    flag = f"family_{data.family}"
    assert sum(v for k, v in features.items() if k.startswith("family_")) == (flag in features)
    assert features.get(flag, 1) == 1
    bigger = meta_features(load_task(Task(name, n_train=1000), data_dir=data_dir))
    assert bigger["log_n_train"] > features["log_n_train"]


def test_list_datasets_reports_local_and_bundled_data(data_dir: Path, tmp_path: Path) -> None:
    here = {s.name: s for s in list_datasets(data_dir)}
    assert set(here) == {*BUILTIN_FILES, "trec_fine", "digits"}
    assert all(here[n].available and here[n].source == f"local:{data_dir / n}" for n in BUILTIN_FILES)
    assert here["trec_fine"].source == f"local:{data_dir / 'trec'}"  # TREC's fine labels, in the trec folder
    assert here["digits"].available and here["digits"].source == "bundled:sklearn"

    assert all(s.hint == "" for s in here.values())

    empty = {s.name: s for s in list_datasets(tmp_path)}
    assert empty["cifar10"].source == "hub:uoft-cs/cifar10"
    assert empty["digits"].available


def test_an_unavailable_dataset_says_how_to_make_it_available(tmp_path: Path, tmp_cache: Path) -> None:
    statuses = {s.name: s for s in list_datasets(tmp_path)}

    assert not statuses["mnist"].available
    for way in ("--data-dir DIR", "RLHPO_DATA_DIR", "DIR/mnist/train.parquet", "internet", "'digits'"):
        assert way in statuses["mnist"].hint
    assert statuses["digits"].available and statuses["digits"].hint == ""


SAMPLER = TaskSampler(datasets=("mnist", "cifar10", "trec", "imdb", "digits"), p_subset=0.5)


def test_sampler_is_deterministic_under_a_seed() -> None:
    def draw(seed: int) -> list[Task]:
        rng = np.random.default_rng(seed)
        return [SAMPLER.sample(rng) for _ in range(30)]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_sampler_draws_diverse_valid_tasks() -> None:
    rng = np.random.default_rng(0)
    tasks = [SAMPLER.sample(rng) for _ in range(200)]

    assert {t.dataset for t in tasks} == set(SAMPLER.datasets)
    assert {t.n_train for t in tasks} == set(SAMPLER.n_train_choices)
    assert {t.family for t in tasks} == {f for families in FAMILIES_BY_MODALITY.values() for f in families}
    assert len({t.seed for t in tasks}) == len(tasks)
    subsets = [t for t in tasks if t.classes is not None]
    assert 40 < len(subsets) < 120
    for t in tasks:
        spec = get_spec(t.dataset)
        assert spec.modality is not None and t.family in FAMILIES_BY_MODALITY[spec.modality]
        if t.classes is not None:
            assert spec.n_classes is not None and 2 <= len(t.classes) < spec.n_classes
            assert list(t.classes) == sorted(set(t.classes))
    assert all(t.classes is None for t in tasks if t.dataset == "imdb")  # two classes: nothing to drop


def test_sampled_tasks_load(data_dir: Path) -> None:
    sampler = TaskSampler(datasets=("trec", "digits"), families={"trec": ("transformer",)}, p_subset=1.0)
    rng = np.random.default_rng(3)
    for _ in range(4):
        task = sampler.sample(rng)
        data = load_task(task, data_dir=data_dir)
        assert task.classes is not None and data.n_classes == len(task.classes)
        assert data.family == ("transformer" if task.dataset == "trec" else "mlp")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"datasets": ()}, "at least one dataset"),
        ({"datasets": ("mnist",), "families": {"mnist": ("gru",)}}, "expected one of cnn, mlp"),
        ({"datasets": ("mnist",), "families": {"trec": ("gru",)}}, "Unknown dataset in families"),
        ({"datasets": ("mnst",)}, "Did you mean 'mnist'"),
        ({"datasets": ("mnist",), "p_subset": 1.5}, "p_subset must be between 0 and 1"),
        ({"datasets": ("mnist",), "min_classes": 1}, "min_classes must be at least 2"),
    ],
)
def test_sampler_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(RlhpoError, match=message):
        TaskSampler(**kwargs)


def test_max_length_keeps_the_first_tokens_of_text(data_dir: Path) -> None:
    full = load_task(Task("ag_news", n_train=200), data_dir=data_dir)
    short = load_task(Task("ag_news", n_train=200, max_length=16), data_dir=data_dir)
    assert short.input_shape == (16,) and full.input_shape[0] > 16
    assert torch.equal(short.x_train, full.x_train[:, :16]) and torch.equal(short.x_test, full.x_test[:, :16])
    assert short.task.key() != full.task.key() and short.task.key().endswith("/L16")
    with pytest.raises(RlhpoError, match="text tasks only"):
        load_task(Task("digits", max_length=8))
