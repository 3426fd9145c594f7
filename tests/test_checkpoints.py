"""helpers.checkpoints: one record schema, atomic pairs, protected checkpoints, one-line errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import checkpoints
from helpers.checkpoints import CheckpointError, MissingCheckpoint, Saver, write_pair
from helpers.training import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "data" / "checkpoints"


def net(width: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def record(
    accuracy: float | None, run_id: str = "run-a", validation: str = "20 toy episodes"
) -> dict:
    return checkpoints.make_record(
        "toy",
        command="python -m toy",
        hardware="test",
        settings={"width": 4},
        run_id=run_id,
        validation=validation,
        val_score=checkpoints.score(accuracy),
    )


def save(path: Path, model: nn.Module, rec: dict) -> dict:
    return write_pair(path, checkpoints.torch_writer(model.state_dict()), rec)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and len(message) < 600


# ----------------------------------------------------------------------------- the schema and the pair


def test_a_saved_pair_loads_and_its_record_names_the_weights(tmp_path):
    model, other = net(), net(seed=1)
    written = save(tmp_path / "m.pt", model, record(0.75))
    assert set(checkpoints.SCHEMA_KEYS) <= set(written)
    assert written["weights"]["sha256"] == checkpoints.file_sha256(tmp_path / "m.pt")
    assert written["weights"]["file"] == "m.pt" and written["status"] == "complete"
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert on_disk == json.loads(json.dumps(written))
    loaded, rec = checkpoints.load(tmp_path / "m.pt", checkpoints.torch_reader(other), "a toy net")
    assert loaded is other and same_weights(model, other) and rec["val_score"]["value"] == 0.75
    assert leftovers(tmp_path) == []


def test_records_are_valid_json_even_with_nan_and_numpy_values(tmp_path):
    import numpy as np

    rec = {
        **record(None),
        "results": {"mean": np.float32(0.5), "curve": [float("nan"), 1.0], "where": tmp_path},
    }
    written = save(tmp_path / "m.pt", net(), rec)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and json.loads(text)["results"] == {
        "mean": 0.5,
        "curve": [None, 1.0],
        "where": str(tmp_path),
    }
    assert written["val_score"] is None


def test_training_save_and_load_checkpoint_are_the_atomic_pair(tmp_path):
    model, other = net(), net(seed=1)
    written = save_checkpoint(tmp_path / "m.pt", model, {"command": "python -m x"})
    assert written["weights"]["sha256"] == checkpoints.file_sha256(tmp_path / "m.pt")
    meta = load_checkpoint(tmp_path / "m.pt", other)
    assert meta["command"] == "python -m x" and same_weights(model, other)


# ----------------------------------------------------------------------------- one sentence per failure


def test_a_missing_checkpoint_says_which_file_what_and_how_to_make_it(tmp_path):
    with pytest.raises(MissingCheckpoint) as caught:
        checkpoints.load(
            tmp_path / "gone.pt",
            checkpoints.torch_reader(net()),
            "a toy net",
            "python -m toy --out gone.pt",
        )
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError) and one_sentence(message)
    assert (
        str(tmp_path / "gone.pt") in message
        and "a toy net" in message
        and "`python -m toy --out gone.pt`" in message
    )


def test_a_truncated_checkpoint_is_one_sentence_with_the_recorded_command(tmp_path):
    save(tmp_path / "m.pt", net(), {**record(0.5), "weights": None})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    rec = json.loads((tmp_path / "m.json").read_text())
    rec["weights"] = None  # a legacy record without a hash: the loader itself must notice
    (tmp_path / "m.json").write_text(json.dumps(rec))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "m.pt", net())
    message = str(caught.value)
    assert (
        one_sentence(message) and str(tmp_path / "m.pt") in message and "`python -m toy`" in message
    )


def test_weights_of_another_architecture_are_named_as_such(tmp_path):
    save(tmp_path / "m.pt", net(width=4), record(0.5))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "m.pt", net(width=8))
    message = str(caught.value)
    assert (
        one_sentence(message)
        and "another network" in message
        and "(4, 3)" in message
        and "(8, 3)" in message
    )


def test_weights_replaced_without_their_record_are_detected(tmp_path):
    save(tmp_path / "m.pt", net(), record(0.5))
    torch.save(net(seed=3).state_dict(), tmp_path / "m.pt")  # a new .pt beside the old .json
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "m.pt", net())
    message = str(caught.value)
    assert (
        one_sentence(message)
        and "does not match its record m.json" in message
        and "SHA-256" in message
    )


def test_an_unreadable_record_is_one_sentence(tmp_path):
    save(tmp_path / "m.pt", net(), record(0.5))
    (tmp_path / "m.json").write_text('{"command": "python -m toy", ')
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "m.pt", net())
    assert one_sentence(str(caught.value)) and "m.json is not a readable checkpoint record" in str(
        caught.value
    )


# ----------------------------------------------------------------------------- interrupted saves


@pytest.mark.parametrize("failing_rename", [1, 2])
def test_a_save_killed_at_either_rename_leaves_the_previous_pair(
    tmp_path, monkeypatch, failing_rename
):
    old_model = net(seed=1)
    save(tmp_path / "m.pt", old_model, record(0.5, run_id="old"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, calls = os.replace, {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == failing_rename:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) exactly there
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "m.pt", net(seed=2), record(0.9, run_id="new"))
    monkeypatch.setattr(checkpoints.os, "replace", real_replace)
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    } == before  # nothing half-written is left
    fresh = net(seed=5)
    assert load_checkpoint(tmp_path / "m.pt", fresh)["run_id"] == "old" and same_weights(
        fresh, old_model
    )


def test_a_save_that_dies_while_writing_the_weights_leaves_nothing(tmp_path):
    save(tmp_path / "m.pt", net(seed=1), record(0.5))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(path: Path) -> None:
        path.write_bytes(b"PK\x03\x04 half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_pair(tmp_path / "m.pt", half_written, record(0.9))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_process_killed_between_the_renames_still_reads_as_the_previous_pair(tmp_path):
    # What SIGKILL between the two renames leaves: the new weights under the old record,
    # and the old weights under their second name. A reader gets the old, consistent pair.
    old_model, new_model = net(seed=1), net(seed=2)
    save(tmp_path / "m.pt", old_model, record(0.5, run_id="old"))
    os.link(tmp_path / "m.pt", checkpoints.previous_path(tmp_path / "m.pt"))
    torch.save(new_model.state_dict(), tmp_path / "staged.pt")
    os.replace(
        tmp_path / "staged.pt", tmp_path / "m.pt"
    )  # the first rename happened, the second did not
    fresh = net(seed=7)
    assert load_checkpoint(tmp_path / "m.pt", fresh)["run_id"] == "old" and same_weights(
        fresh, old_model
    )
    # the next save repairs the folder: one consistent pair, no second name left
    save(tmp_path / "m.pt", new_model, record(0.6, run_id="next"))
    assert leftovers(tmp_path) == []
    assert load_checkpoint(tmp_path / "m.pt", fresh)["run_id"] == "next" and same_weights(
        fresh, new_model
    )


def test_ctrl_c_during_the_renames_waits_until_the_pair_is_written(tmp_path):
    save(tmp_path / "m.pt", net(seed=1), record(0.5, run_id="old"))
    real_replace = os.replace
    # Python's own Ctrl-C handler, whatever an earlier test of the session left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)  # arrives between the two renames

    checkpoints.os.replace = replace_then_signal
    try:
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path / "m.pt", net(seed=2), record(0.9, run_id="new"))
    finally:
        checkpoints.os.replace = real_replace
        signal.signal(signal.SIGINT, previous)
    assert (
        load_checkpoint(tmp_path / "m.pt", net())["run_id"] == "new"
    )  # delivered after both renames
    assert leftovers(tmp_path) == []


def test_update_record_keeps_the_pair_together(tmp_path):
    save(tmp_path / "m.pt", net(), record(0.5))
    updated = checkpoints.update_record(tmp_path / "m.pt", wall_seconds=12.5, status="complete")
    assert updated["wall_seconds"] == 12.5
    assert load_checkpoint(tmp_path / "m.pt", net())["wall_seconds"] == 12.5
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- protected checkpoints


def test_a_committed_better_checkpoint_survives_a_worse_run(tmp_path):
    path = tmp_path / "best.pt"
    committed = net(seed=1)
    save(path, committed, record(0.99, run_id="committed"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    said = []
    saver = Saver(path, "new-run", say=said.append)
    saver.save(checkpoints.torch_writer(net(seed=2).state_dict()), record(0.40))
    saver.save(
        checkpoints.torch_writer(net(seed=3).state_dict()), record(0.60)
    )  # keep-best within the run
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # untouched
    assert saver.path == tmp_path / "best_new-run.pt" and len(said) == 1
    assert (
        "best.pt" in said[0]
        and "best_new-run.pt" in said[0]
        and "--overwrite" in said[0]
        and "99.00 %" in said[0]
    )
    assert load_checkpoint(saver.path, net())["val_score"]["value"] == 0.60


def test_a_run_that_catches_up_replaces_the_checkpoint_and_removes_its_saves_beside_it(tmp_path):
    path = tmp_path / "best.pt"
    save(path, net(seed=1), record(0.58, run_id="committed"))
    said = []
    saver = Saver(path, "new-run", say=said.append)
    saver.save(checkpoints.torch_writer(net(seed=2).state_dict()), record(0.57))  # not yet
    beside_path = tmp_path / "best_new-run.pt"
    assert saver.path == beside_path and beside_path.exists() and len(said) == 1
    winner = net(seed=3)
    saver.save(checkpoints.torch_writer(winner.state_dict()), record(0.80))
    assert saver.path == path and not beside_path.exists()
    assert not checkpoints.record_path(beside_path).exists()
    fresh = net(seed=9)
    assert load_checkpoint(path, fresh)["run_id"] == "new-run" and same_weights(fresh, winner)
    assert len(said) == 2 and "80.00 %" in said[1] and "58.00 %" in said[1]
    saver.save(checkpoints.torch_writer(net(seed=4).state_dict()), record(0.81))  # its own now
    assert saver.path == path and len(said) == 2 and leftovers(tmp_path) == []


def test_overwrite_a_better_run_only_when_asked(tmp_path):
    path = tmp_path / "best.pt"
    save(path, net(seed=1), record(0.99, run_id="committed"))
    winner = net(seed=2)
    Saver(path, "new-run", overwrite=True).save(
        checkpoints.torch_writer(winner.state_dict()), record(0.40)
    )
    fresh = net(seed=9)
    assert load_checkpoint(path, fresh)["run_id"] == "new-run" and same_weights(fresh, winner)


def test_a_better_run_measured_the_same_way_replaces_the_checkpoint(tmp_path):
    path = tmp_path / "best.pt"
    save(path, net(seed=1), record(0.50, run_id="old"))
    saver = Saver(path, "new-run", say=pytest.fail)
    saver.save(checkpoints.torch_writer(net(seed=2).state_dict()), record(0.70))
    assert saver.path == path and load_checkpoint(path, net())["run_id"] == "new-run"


@pytest.mark.parametrize(
    "existing",
    [
        record(0.50, run_id="old", validation="5-way episodes"),  # another measure: not comparable
        {"command": "python -m old"},  # a record without any validation number
        None,  # weights without a record
    ],
)
def test_checkpoints_that_cannot_be_compared_are_kept(tmp_path, existing):
    path = tmp_path / "kept.pt"
    if existing is None:
        torch.save(net(seed=1).state_dict(), path)
    else:
        save(path, net(seed=1), existing)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    said = []
    saver = Saver(path, "new-run", say=said.append)
    saver.save(checkpoints.torch_writer(net(seed=2).state_dict()), record(0.99))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert saver.path != path and saver.path.exists() and len(said) == 1


def test_committed_checkpoints_follow_the_schema_and_their_weights_match():
    # a run stopped by its --minutes or Ctrl-C leaves <name>.resume.json beside it: run state, not a
    # committed checkpoint (gitignored), so a developer's own runs do not fail this test
    records = sorted(p for p in COMMITTED.glob("*.json") if not p.name.endswith(".resume.json"))
    assert len(records) >= 15
    for path in records:
        rec = json.loads(path.read_text())
        missing = set(checkpoints.SCHEMA_KEYS) - set(rec)
        assert not missing, f"{path.name} lacks {sorted(missing)}"
        weights = COMMITTED / rec["weights"]["file"]
        assert weights.exists() and checkpoints.file_sha256(weights) == rec["weights"]["sha256"], (
            path.name
        )
        assert rec["status"] == "complete" and rec["command"] and rec["hardware"], path.name
        if rec["method"] != "zero_shot":  # the text vectors are computed, not trained
            assert isinstance(rec["wall_seconds"], (int, float)) and rec["val_score"] is not None, (
                path.name
            )
        for key in (
            "wall_time_s",
            "wall_minutes",
            "maml_seconds",
        ):  # one key for wall time (see the reader aliases)
            assert key not in rec or path.name.startswith(("siamese_", "maml_sinusoid")), (
                f"{path.name} still has {key}"
            )
