"""helpers.side_by_side: shared episodes without pixels, chunked evaluation, paired comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import side_by_side as sbs
from helpers.episodes import EpisodeError, FewShotDataset, sample_episodes
from helpers.fewshot import EvalResult, PixelNearestNeighbour, evaluate

ROOT = Path(__file__).resolve().parent.parent


def small_dataset(n_classes: int = 12, per_class: int = 20) -> FewShotDataset:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = (rng.integers(0, 60, size=(len(labels), 28, 28)) + 15 * labels[:, None, None]).astype(
        np.uint8
    )
    return FewShotDataset("toy", images, labels, tuple(f"c{c}" for c in range(n_classes)))


def test_light_episodes_are_the_sampled_episodes_and_with_pixels_restores_them():
    data = small_dataset()
    light = sbs.light_episodes(data, 5, 2, 3, 4, seed=7)
    full = sample_episodes(data, 5, 2, 3, 4, seed=7)
    for a, b in zip(light, full, strict=True):
        assert np.array_equal(a.support_indices, b.support_indices) and np.array_equal(
            a.query_indices, b.query_indices
        )
        assert torch.equal(a.query_labels, b.query_labels)
        restored = sbs.with_pixels(data, a)
        assert torch.equal(restored.support_images, b.support_images) and torch.equal(
            restored.query_images, b.query_images
        )


def test_chunked_pixel_evaluation_equals_evaluate_on_full_episodes():
    data = small_dataset()
    light = sbs.light_episodes(data, 5, 1, 4, 23, seed=1)
    full = sample_episodes(data, 5, 1, 4, 23, seed=1)
    chunked = sbs.evaluate_on_pixels(
        PixelNearestNeighbour("cosine"), data, light, chunk=5, progress=False
    )
    direct = evaluate(PixelNearestNeighbour("cosine"), full, progress=False)
    assert np.array_equal(chunked.accuracies, direct.accuracies) and chunked.mean == direct.mean


def test_paired_difference_is_narrower_than_the_two_intervals():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.5, 1.0, size=400)  # shared by both methods: some episodes are harder
    a = np.clip(difficulty + 0.02 + rng.normal(0, 0.01, 400), 0, 1)
    b = np.clip(difficulty + rng.normal(0, 0.01, 400), 0, 1)
    result_a, result_b = (
        EvalResult(x.mean(), 1.96 * x.std(ddof=1) / np.sqrt(len(x)), x) for x in (a, b)
    )
    mean, ci95 = sbs.paired_difference(result_a, result_b)
    assert abs(mean - (a - b).mean()) < 1e-12
    assert ci95 < (result_a.ci95 + result_b.ci95) / 5 and mean - ci95 > 0
    with pytest.raises(ValueError, match="same episodes"):
        sbs.paired_difference(result_a, EvalResult(0.5, 0.1, b[:10]))


def test_impossible_settings_are_refused_with_one_line():
    with pytest.raises(EpisodeError):
        sbs.light_episodes(small_dataset(), 13, 1, 3, 5)  # 13 ways, 12 classes
    with pytest.raises(ValueError, match="count"):
        sbs.light_episodes(small_dataset(), 5, 1, 3, 0)


def test_every_committed_omniglot_checkpoint_has_a_training_record():
    for name in (
        "protonet_omniglot_1shot",
        "matching_fce",
        "oneshot_conv4_background",
        "maml_omniglot_5w1s",
        "siamese_omniglot_koch28",
        "siamese_omniglot_conv4",
        "siamese_omniglot_conv4_allpairs",
        "oneshot_conv4_background25",
        "siamese_omniglot_conv4_fromclassifier25",
    ):
        record = sbs.training_record(ROOT / "data" / "checkpoints" / f"{name}.pt")
        assert 0 < record.minutes < 24 * 60 and record.hardware and record.command


def test_a_warm_started_checkpoint_counts_the_minutes_of_the_run_it_began_from(tmp_path):
    import json

    record = {"wall_seconds": 600.0, "hardware": "2-core CPU, no GPU", "command": "python -m ..."}
    (tmp_path / "cold.json").write_text(json.dumps(record))
    (tmp_path / "warm.json").write_text(
        json.dumps(record | {"init_from": {"train_seconds": 1380.0}})
    )
    (tmp_path / "chain.json").write_text(  # a warm start of a warm start: both earlier runs count
        json.dumps(
            record | {"init_from": {"train_seconds": 1380.0, "init_from": {"train_seconds": 120.0}}}
        )
    )
    (tmp_path / "tower.json").write_text(  # a twin whose tower began as a classifier
        json.dumps(record | {"tower_from": {"checkpoint": "c.pt", "train_seconds": 138.0}})
    )
    (tmp_path / "after.json").write_text(  # a warm start of that twin: both runs behind it count
        json.dumps(
            record | {"init_from": {"train_seconds": 60.0, "tower_from": {"train_seconds": 138.0}}}
        )
    )
    cold, warm, chain, tower, after = (
        sbs.training_record(tmp_path / f"{name}.pt")
        for name in ("cold", "warm", "chain", "tower", "after")
    )
    assert (cold.minutes, cold.warm_start_minutes) == (10.0, 0.0)
    assert (warm.minutes, warm.warm_start_minutes) == (33.0, 23.0)
    assert (chain.minutes, chain.warm_start_minutes) == (35.0, 25.0)
    assert (tower.minutes, tower.warm_start_minutes) == (12.3, 2.3)
    assert (after.minutes, after.warm_start_minutes) == (13.3, 3.3)


def test_results_table_puts_the_paper_beside_each_measurement():
    result = EvalResult(0.5, 0.01, np.array([0.5]))
    table = sbs.results_table(
        {"ours": {(5, 1): result, (20, 1): None}}, [(5, 1), (20, 1)], {"ours": "MAML"}
    )
    assert "| ours | 50.0 ± 1.0 (98.7) | not trained (95.8) |" in table


def test_the_hardware_note_says_which_device_and_how_many_runs_shared_it():
    def record(hardware: str) -> sbs.TrainingRecord:
        return sbs.TrainingRecord(1.0, hardware, "python -m ...")

    gpu7 = record(
        "cuda (NVIDIA H100 80GB HBM3); this run shared the GPU with 6 other training processes"
    )
    assert gpu7.on_gpu and gpu7.processes_sharing == 7 and gpu7.device == "GPU shared by 7 runs"
    gpu4 = record("1 NVIDIA H100 80GB (device session), shared by 4 concurrent training processes")
    assert gpu4.processes_sharing == 4 and gpu4.device == "GPU shared by 4 runs"
    assert record("cuda (NVIDIA H200)").device == "GPU"
    cpu = record("2-core CPU, no GPU, shared with other engineers' jobs (load average about 15)")
    assert not cpu.on_gpu and cpu.processes_sharing is None and cpu.device == "2-core CPU"
    committed = sbs.training_record(ROOT / "data" / "checkpoints" / "protonet_omniglot_1shot.pt")
    assert committed.device == "GPU shared by 7 runs"


def test_paper_gaps_compare_each_setting_with_its_own_papers_number():
    results = {
        (5, 1): EvalResult(0.986, 0.002, np.array([0.986])),
        (5, 5): EvalResult(0.990, 0.001, np.array([0.99])),
        (20, 1): None,
    }
    gaps = sbs.paper_gaps(results, "Prototypical Networks, 1-shot training")
    assert [g.setting for g in gaps] == [
        (5, 1)
    ]  # 5-shot: the 1-shot model has no paper number there
    (gap,) = gaps
    assert abs(gap.points - (98.6 - 98.8)) < 1e-9 and gap.reaches_paper  # 98.6 + 0.2 reaches 98.8
    fo = sbs.paper_gaps(results, "first-order MAML")
    assert [round(g.paper, 1) for g in fo] == [98.3, 99.2] and not fo[1].reaches_paper


def test_paper_numbers_for_maml_agree_with_helpers_maml():
    """The side-by-side table and notebook 07 quote Finn et al. from two tables: they must agree."""
    from helpers import maml

    for (n_way, k_shot), (second, first) in maml.PAPER_OMNIGLOT_ACCURACY.items():
        assert sbs.PAPER["MAML"][n_way, k_shot] == second
        assert sbs.PAPER["first-order MAML"][n_way, k_shot] == first
    assert set(sbs.PAPER["MAML"]) == set(maml.PAPER_OMNIGLOT_ACCURACY)
