"""Every bad input gets one sentence: the helpers' API, and the training commands (exit status 2).

The commands are run in this process (``module.main(argv)``) where that is enough to see what a
user sees: their stderr, their exit status, the files they leave. Validation happens before
any data is loaded, so these tests need no dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import validation
from helpers.device import DeviceError, pick_device, seed_everything

# ----------------------------------------------------------------------------- the API


@pytest.mark.parametrize("value", ["gpu", "cuda0", "tpu", "CPU2"])
def test_an_unknown_device_variable_is_named_in_one_sentence(monkeypatch, value):
    monkeypatch.setenv("METALEARN_DEVICE", value)
    with pytest.raises(DeviceError) as caught:
        pick_device()
    message = str(caught.value)
    assert (
        message.startswith(f"METALEARN_DEVICE={value!r} is not a device name")
        and "unset it" in message
    )
    assert "\n" not in message


def test_a_device_argument_is_named_as_the_argument(monkeypatch):
    monkeypatch.delenv("METALEARN_DEVICE", raising=False)
    with pytest.raises(DeviceError, match=r"^device='gpu' is not a device name"):
        pick_device("gpu")
    assert pick_device("CPU").type == "cpu"  # names are not case-sensitive


@pytest.mark.parametrize("seed", [-1, "3", 2.5, 2**32, True, None])
def test_bad_seeds_are_named(seed):
    with pytest.raises(ValueError, match=r"^seed=.* must be a whole number from 0 to 2\*\*32 - 1"):
        seed_everything(seed)


@pytest.mark.parametrize("seed", [-1, "3"])
def test_episode_samplers_name_a_bad_seed(seed):
    from helpers.episodes import EpisodeSampler, FewShotDataset
    from helpers.training import DeviceEpisodeSampler

    data = FewShotDataset(
        "toy", np.zeros((20, 4, 4), np.uint8), np.repeat(np.arange(4), 5), tuple("abcd")
    )
    for sampler in (EpisodeSampler, DeviceEpisodeSampler):
        with pytest.raises(
            ValueError, match=r"^seed=.* must be a whole number from 0 to 2\*\*32 - 1"
        ):
            sampler(data, 2, 1, 1, seed=seed)
    EpisodeSampler(data, 2, 1, 1, seed=None)  # None still means "fresh randomness"


def test_numpy_numbers_are_numbers():
    seed_everything(np.int64(3))
    assert validation.positive_number("lr", np.float32(0.01)) == pytest.approx(0.01)
    assert validation.whole_number("n_way", np.int32(5), 2) == 5
    from helpers.maml import MAML, sinusoid_net

    learner = MAML(
        sinusoid_net(),
        inner_lr=np.float32(0.01),
        outer_lr=np.float64(1e-3),
        inner_steps=np.int64(1),
    )
    assert learner.inner_lr == pytest.approx(0.01) and learner.inner_steps == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: validation.positive_number("lr", float("inf")),
            "lr=inf must be a positive finite number",
        ),
        (lambda: validation.positive_number("lr", 0), "lr=0 must be a positive finite number"),
        (
            lambda: validation.positive_number("lr", "0.1"),
            "lr='0.1' must be a positive finite number",
        ),
        (
            lambda: validation.whole_number("episodes", 0, 1),
            "episodes=0 must be a whole number >= 1",
        ),
        (lambda: validation.whole_number("steps", 1.5, 0), "steps=1.5 must be a whole number >= 0"),
        (
            lambda: validation.whole_number("n_way", 9, 2, 5),
            "n_way=9 must be a whole number between 2 and 5",
        ),
    ],
)
def test_constraints_name_the_parameter_its_value_and_the_range(call, message):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value).startswith(message) and str(caught.value).endswith(".")


def test_threads_must_be_a_whole_number():
    from helpers.device import training_device

    with pytest.raises(ValueError, match=r"^threads=0 must be a whole number >= 1\."):
        training_device("cpu", 0)
    assert torch.get_num_threads() >= 1


# ----------------------------------------------------------------------------- the commands


def run_command(main, argv, capsys):
    """``main(argv)`` as a user runs it: ``(exit status, stdout, stderr)``."""
    try:
        main(argv)
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def modules():
    from helpers import maml, maml_rl, matching, one_shot, protonet

    found = {
        "protonet": protonet.main,
        "matching": matching.main,
        "maml": maml.main,
        "one_shot": one_shot.main,
        "maml_rl": maml_rl.main,
    }
    return found


def siamese_main(argv):
    from helpers import siamese  # imports Keras and TensorFlow: only for the Siamese cases

    return siamese.main(argv)


KOCH28_TWIN = str(Path(__file__).parents[1] / "data/checkpoints/siamese_omniglot_koch28.keras")
CONV4_ENCODER = str(Path(__file__).parents[1] / "data/checkpoints/oneshot_conv4_background.pt")

BAD_INPUTS = [
    # (command, arguments, what the one line must say)
    ("protonet", ["--lr", "inf"], "--lr=inf must be a positive finite number"),
    ("protonet", ["--lr", "0"], "--lr=0.0 must be a positive finite number"),
    ("protonet", ["--lr", "nan"], "--lr=nan must be a positive finite number"),
    ("protonet", ["--lr-step", "0"], "--lr-step=0 must be a whole number >= 1"),
    ("protonet", ["--episodes", "0"], "--episodes=0 must be a whole number >= 1"),
    ("protonet", ["--episodes", "-5"], "--episodes=-5 must be a whole number >= 1"),
    ("protonet", ["--seed", "-1"], "--seed=-1 must be a whole number from 0 to 2**32 - 1"),
    ("protonet", ["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (
        "protonet",
        ["--n-way", "5000"],
        "--n-way=5000 is more than the 4800 classes of Omniglot's vinyals-trainval split",
    ),
    ("protonet", ["--n-way", "1"], "--n-way=1 must be a whole number >= 2"),
    ("protonet", ["--k-shot", "6"], "--k-shot 6 plus --val-query 15 is 21 images per class"),
    ("protonet", ["--n-query", "0"], "--n-query=0 must be a whole number between 1 and 19"),
    (
        "protonet",
        ["--val-split", "vinyals-everything"],
        "split 'vinyals-everything' is not an Omniglot split",
    ),
    ("protonet", ["--threads", "0"], "--threads=0 must be a whole number >= 1"),
    ("protonet", ["--device", "tpu"], "--device='tpu' is not a device name"),
    ("protonet", ["--max-minutes", "-1"], "--max-minutes=-1.0 must be a positive finite number"),
    ("protonet", ["--bogus"], "unrecognized arguments: --bogus"),
    (
        "protonet",
        ["--resume", "--overwrite"],
        "--resume continues an interrupted run and --overwrite starts afresh",
    ),
    ("matching", ["--out", "OUT", "--lr", "inf"], "--lr=inf must be a positive finite number"),
    (
        "matching",
        ["--out", "OUT", "--processing-steps", "0"],
        "--processing-steps=0 must be a whole number >= 1",
    ),
    (
        "matching",
        ["--out", "OUT", "--scale", "-1"],
        "--scale=-1.0 must be a positive finite number",
    ),
    (
        "matching",
        ["--out", "OUT", "--lr-halve-every", "0"],
        "--lr-halve-every=0 must be a whole number >= 1",
    ),
    ("matching", [], "the following arguments are required: --out"),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--meta-steps", "-1"],
        "--meta-steps=-1 must be a whole number >= 1",
    ),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--inner-lr", "0"],
        "--inner-lr=0.0 must be a positive finite number",
    ),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--meta-lr", "inf"],
        "--meta-lr=inf must be a positive finite number",
    ),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--k-shot", "15", "--n-query", "6"],
        "--k-shot 15 plus --n-query 6 is 21 images",
    ),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--paper", "--n-way", "7"],
        "--paper knows the paper's settings for --n-way 5 and 20",
    ),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--mode", "fast"],
        "argument --mode: invalid choice: 'fast'",
    ),
    ("maml", ["sinusoid", "--out", "OUT", "--k", "0"], "--k=0 must be a whole number >= 1"),
    (
        "maml",
        ["sinusoid", "--out", "OUT", "--seed", "-3"],
        "--seed=-3 must be a whole number from 0 to 2**32 - 1",
    ),
    ("maml", ["bogus"], "argument task: invalid choice: 'bogus'"),
    ("one_shot", ["--out", "OUT", "--lr", "inf"], "--lr=inf must be a positive finite number"),
    ("one_shot", ["--out", "OUT", "--epochs", "0"], "--epochs=0 must be a whole number >= 1"),
    (
        "one_shot",
        ["--out", "OUT", "--batch-size", "-1"],
        "--batch-size=-1 must be a whole number >= 1",
    ),
    (
        "one_shot",
        ["--out", "OUT", "--val-per-class", "20"],
        "--val-per-class=20 must be a whole number between 0 and 19",
    ),
    (
        "one_shot",
        ["--out", "OUT", "--hold-out-alphabets", "30"],
        "--hold-out-alphabets=30 must be a whole number between 0 and 29",
    ),
    (
        "one_shot",
        ["--out", "OUT", "--seed", "-1"],
        "--seed=-1 must be a whole number from 0 to 2**32 - 1",
    ),
    (
        "maml_rl",
        ["--out", "OUT", "--outer-lr", "inf"],
        "--outer-lr=inf must be a positive finite number",
    ),
    (
        "maml_rl",
        ["--out", "OUT", "--inner-lr", "0"],
        "--inner-lr=0.0 must be a positive finite number",
    ),
    (
        "maml_rl",
        ["--out", "OUT", "--iterations", "0"],
        "--iterations=0 must be a whole number >= 1",
    ),
    (
        "maml_rl",
        ["--out", "OUT", "--trajectories", "1"],
        "--trajectories=1 must be a whole number >= 2",
    ),
    (
        "maml_rl",
        ["--out", "OUT", "--inner-steps", "-1"],
        "--inner-steps=-1 must be a whole number >= 0",
    ),
    ("maml_rl", ["--out", "OUT", "--reward", "gold"], "argument --reward: invalid choice: 'gold'"),
    (
        "siamese",
        ["--out", "OUT.keras", "--minutes", "0"],
        "--minutes=0.0 must be a positive finite number",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--learning-rate", "inf"],
        "--learning-rate=inf must be a positive finite number",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--validation-alphabets", "30"],
        "--validation-alphabets=30 must be a whole number between 1 and 29",
    ),
    ("siamese", ["--out", "OUT"], "must end in .keras"),
    (
        "siamese",
        ["--out", "OUT.keras", "--base", "resnet"],
        "argument --base: invalid choice: 'resnet'",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--pairing", "all-in-batch", "--batch-size", "30"],
        "--batch-size=30: with --pairing all-in-batch a batch holds 4 drawings",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--batch-size", "0"],
        "--batch-size=0 must be a whole number >= 1",
    ),
    ("siamese", ["--out", "OUT.keras", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (
        "maml",
        ["omniglot", "--out", "OUT", "--meta-lr-half-life", "0"],
        "--meta-lr-half-life=0.0 must be a positive finite number",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--lr-decay", "1.5"],
        "--lr-decay=1.5 would grow the learning rate every round; give a factor in (0, 1]",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--lr-decay", "0"],
        "--lr-decay=0.0 must be a positive finite number",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--init", "gone.keras"],
        "--init gone.keras is not a twin that python -m helpers.siamese saved",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--base", "conv4", "--init", KOCH28_TWIN],
        "has the koch28 tower, but --base is conv4; give --base koch28 or a conv4 twin",
    ),
    (
        "siamese",
        ["--out", KOCH28_TWIN, "--init", KOCH28_TWIN],
        "is also --out: give the new run another --out",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--tower-from", CONV4_ENCODER],
        "is a Conv-4, but --base is koch28; give --base conv4",
    ),
    (
        "siamese",
        [
            "--out",
            "OUT.keras",
            "--base",
            "conv4",
            "--tower-from",
            CONV4_ENCODER,
            "--init",
            KOCH28_TWIN,
        ],
        "--tower-from and --init both say where the weights start: give one of them",
    ),
    (
        "siamese",
        ["--out", "OUT.keras", "--base", "conv4", "--tower-from", "gone.pt"],
        "--tower-from gone.pt: there is no such file",
    ),
]


@pytest.mark.parametrize(
    ("command", "argv", "expected"), BAD_INPUTS, ids=[" ".join([c, *a]) for c, a, _ in BAD_INPUTS]
)
def test_every_bad_argument_is_one_line_and_exit_status_2(
    command, argv, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("METALEARN_DEVICE", raising=False)
    out = tmp_path / "checkpoints" / "x.pt"
    argv = [a.replace("OUT", str(out)) if a.startswith("OUT") else a for a in argv]
    if command == "protonet":
        argv = ["--checkpoint", str(out), *argv]
    main = siamese_main if command == "siamese" else modules()[command]
    status, stdout, stderr = run_command(main, argv, capsys)
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"python -m helpers.{command}: error: ") and expected in lines[0], (
        lines[0]
    )
    assert not (tmp_path / "checkpoints").exists()  # nothing written, not even the folder


def test_the_device_variable_is_named_by_every_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METALEARN_DEVICE", "gpu")
    for command, argv in (
        ("protonet", ["--checkpoint", str(tmp_path / "x.pt")]),
        ("maml", ["omniglot", "--out", str(tmp_path / "x.pt")]),
        ("one_shot", ["--out", str(tmp_path / "x.pt")]),
        ("matching", ["--out", str(tmp_path / "x.pt")]),
    ):
        status, _, stderr = run_command(modules()[command], argv, capsys)
        assert status == 2 and stderr.count("\n") == 1
        assert "METALEARN_DEVICE='gpu' is not a device name; use cpu, cuda" in stderr


def test_debug_shows_the_traceback(tmp_path, capsys):
    from helpers import protonet

    with pytest.raises(ValueError, match="--lr=inf"):
        protonet.main(["--checkpoint", str(tmp_path / "x.pt"), "--lr", "inf", "--debug"])


def test_an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, _, stderr = run_command(
        modules()["protonet"], ["--checkpoint", str(blocker / "x.pt")], capsys
    )
    assert status == 2 and "is not a writable folder" in stderr and stderr.count("\n") == 1


# ----------------------------------------------------------------------------- stop, resume, the same run


def toy_episodic(tmp_path, name, stop_at=None, resume=False):
    """A tiny ProtoNet-style run through commands.episodic_run (no dataset needed)."""
    import argparse
    import time

    from helpers import commands, runs
    from helpers.episodes import FewShotDataset
    from helpers.protonet import ProtoNet
    from helpers.training import DeviceEpisodeSampler

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 255, size=(6, 8, 8))
    images = np.clip(
        np.repeat(centres, 10, axis=0) + rng.integers(-40, 40, size=(60, 8, 8)), 0, 255
    ).astype(np.uint8)
    data = FewShotDataset("toy", images, np.repeat(np.arange(6), 10), tuple("abcdef"))
    args = argparse.Namespace(
        episodes=30,
        val_every=10,
        max_minutes=None,
        seed=0,
        no_progress=True,
        resume=resume,
        overwrite=False,
        started=time.perf_counter(),
    )
    settings = {"episodes": 30, "val_every": 10, "seed": 0}
    files = commands.RunFiles(tmp_path / f"{name}.pt", args, settings, say=print)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    sampler = DeviceEpisodeSampler(data, 3, 1, 2, seed=0)
    if stop_at is not None:
        draw, count = sampler.sample, {"n": 0}

        def sample():
            count["n"] += 1
            if count["n"] == stop_at:
                runs.request_stop("SIGINT")  # what the Ctrl-C handler does
            return draw()

        sampler.sample = sample
    val = DeviceEpisodeSampler(data, 3, 1, 3, seed=99).take(5)
    record = {"command": f"toy {name}", "method": "toy", "validation": "5 toy episodes"}
    with runs.StopSignals(announce=False):
        history = commands.episodic_run(
            files,
            args,
            f"toy {name}",
            method=ProtoNet(model),
            sampler=sampler,
            optimizer=optimizer,
            scheduler=scheduler,
            val_episodes=val,
            record=record,
            keep="best",
            device=torch.device("cpu"),
        )
    files.finish()
    return history, model, files


def test_a_stopped_episodic_run_resumes_to_the_same_run(tmp_path):
    from helpers import checkpoints, commands

    whole, whole_model, whole_files = toy_episodic(tmp_path, "whole")
    with pytest.raises(commands.Interrupted) as caught:
        toy_episodic(tmp_path, "split", stop_at=15)
    message = str(caught.value)
    assert (
        "stopped at episode 15 of 30" in message
        and "split.resume.pt" in message
        and "toy split --resume" in message
    )
    assert caught.value.exit_status == 130
    assert checkpoints.resume_path(tmp_path / "split.pt").exists()
    split, split_model, split_files = toy_episodic(tmp_path, "split", resume=True)
    assert (
        split.loss == whole.loss
        and split.val_accuracy == whole.val_accuracy
        and split.episode == list(range(1, 31))
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole_model.state_dict().values(), split_model.state_dict().values())
    )
    a, b = (torch.load(f.saver.path, weights_only=True) for f in (whole_files, split_files))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same best weights were kept
    assert not checkpoints.resume_path(
        tmp_path / "split.pt"
    ).exists()  # a finished run needs no resume state


def test_a_fresh_run_over_an_interrupted_one_is_refused(tmp_path):
    from helpers import commands

    with pytest.raises(commands.Interrupted):
        toy_episodic(tmp_path, "run", stop_at=5)
    with pytest.raises(
        commands.CommandError,
        match="holds an unfinished run of this checkpoint",
    ):
        toy_episodic(tmp_path, "run")
    with pytest.raises(commands.CommandError, match="--resume: there is no interrupted run"):
        toy_episodic(tmp_path, "other", resume=True)


def test_a_non_finite_loss_stops_training_and_saves_no_nan(tmp_path):
    from helpers import runs
    from helpers.episodes import FewShotDataset
    from helpers.protonet import ProtoNet
    from helpers.training import DeviceEpisodeSampler, load_checkpoint, train_episodic

    images = np.random.default_rng(0).integers(0, 255, size=(40, 8, 8)).astype(np.uint8)
    data = FewShotDataset("toy", images, np.repeat(np.arange(4), 10), tuple("abcd"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    val = DeviceEpisodeSampler(data, 3, 1, 3, seed=9).take(3)
    with pytest.raises(runs.NonFiniteLoss, match=r"the loss became (nan|inf) at step \d+"):
        train_episodic(
            ProtoNet(model),
            DeviceEpisodeSampler(data, 3, 1, 3),
            200,
            torch.optim.SGD(model.parameters(), lr=1e12),
            val_episodes=val,
            val_every=1,
            checkpoint=tmp_path / "x.pt",
            progress=False,
        )
    if (tmp_path / "x.pt").exists():  # an early validation may have saved: those weights are finite
        fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
        load_checkpoint(tmp_path / "x.pt", fresh)
        assert runs.all_finite(fresh.state_dict().values())


def tiny_maml_argv(out, *extra) -> list[str]:
    """A MAML omniglot command of 5 meta-steps on 3-way tasks, validated after each, on the CPU."""
    argv = ["omniglot", "--n-way", "3", "--k-shot", "1", "--n-query", "1", "--meta-batch", "2"]
    argv += ["--meta-steps", "5", "--val-every", "1", "--val-episodes", "2", "--eval-steps", "1"]
    return [*argv, "--threads", "1", "--no-progress", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
@pytest.mark.parametrize("schedule", [[], ["--meta-lr-half-life", "2"]], ids=["constant", "decay"])
def test_maml_omniglot_stopped_and_resumed_equals_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch, schedule
):
    import os
    import signal

    from helpers import checkpoints, maml

    losses: dict[str, list[float]] = {"whole": [], "split": []}
    rates: dict[str, list[float]] = {"whole": [], "split": []}
    last_weights: dict[str, dict] = {}
    current = {"run": "whole", "stop_after": None}
    real_step = maml.MAML.meta_step

    def spying_step(self, batch):
        rates[current["run"]].append(self.optimizer.param_groups[0]["lr"])
        loss = real_step(self, batch)
        losses[current["run"]].append(loss)
        last_weights[current["run"]] = {
            k: v.detach().clone() for k, v in self.model.state_dict().items()
        }
        if len(losses[current["run"]]) == current["stop_after"]:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during meta-step 3 of 5
        return loss

    monkeypatch.setattr(maml.MAML, "meta_step", spying_step)
    threads = torch.get_num_threads()

    def run(name, *extra):
        argv = tiny_maml_argv(tmp_path / f"{name}.pt", *schedule, *extra)
        return run_command(maml.main, argv, capsys)

    try:
        assert run("whole")[0] == 0
        current.update(run="split", stop_after=3)
        status, _, stderr = run("split")
        assert status == 130 and stderr.strip().splitlines()[-1].startswith(
            "python -m helpers.maml: stopped at meta-step 3 of 5"
        )
        assert "--resume" in stderr and checkpoints.resume_path(tmp_path / "split.pt").exists()
        current["stop_after"] = None
        assert run("split", "--resume")[0] == 0
    finally:
        torch.set_num_threads(threads)
    assert (
        len(losses["whole"]) == 5 and losses["split"] == losses["whole"]
    )  # the same losses, step for step
    # Adam's step size at each meta-step: constant, or halved every 2 meta-steps, resumed or not
    expected = [1e-3 * (0.5 ** ((t - 1) / 2) if schedule else 1.0) for t in range(1, 6)]
    assert rates["whole"] == pytest.approx(expected, rel=1e-12)
    assert rates["split"] == rates["whole"]
    assert all(
        torch.equal(last_weights["whole"][k], last_weights["split"][k])
        for k in last_weights["whole"]
    )
    whole, split = (checkpoints.read_record(tmp_path / f"{n}.pt") for n in ("whole", "split"))
    assert (
        whole["history"] == split["history"]
        and whole["val_score"] == split["val_score"]
        and split["status"] == "complete"
    )
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoints.resume_path(tmp_path / "split.pt").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
def test_maml_stopped_by_its_time_limit_resumes_with_more_minutes_to_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch
):
    """--minutes is the run's total: a run that ran out of it keeps its state, and --resume with a
    larger --minutes takes the steps one longer run would have taken."""
    import time

    from helpers import checkpoints, maml

    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])  # the loop's clock
    losses: dict[str, list[float]] = {"whole": [], "split": []}
    last_weights: dict[str, dict] = {}
    current = {"run": "whole"}
    real_step = maml.MAML.meta_step

    def one_minute_step(self, batch):
        loss = real_step(self, batch)
        clock["now"] += 60.0
        losses[current["run"]].append(loss)
        last_weights[current["run"]] = {
            k: v.detach().clone() for k, v in self.model.state_dict().items()
        }
        return loss

    monkeypatch.setattr(maml.MAML, "meta_step", one_minute_step)
    threads = torch.get_num_threads()

    def run(name, *extra):
        return run_command(maml.main, tiny_maml_argv(tmp_path / f"{name}.pt", *extra), capsys)

    try:
        assert run("whole")[0] == 0
        current["run"] = "split"
        status, out, stderr = run("split", "--minutes", "2.5")  # 3 one-minute steps pass 2.5 min
        assert status == 0, stderr
        assert "stopped at the time limit, meta-step 3 of 5" in out and "--resume" in out
        assert len(losses["split"]) == 3
        assert checkpoints.read_record(tmp_path / "split.pt")["meta_steps_done"] == 3
        assert checkpoints.resume_path(tmp_path / "split.pt").exists()
        assert run("split", "--resume", "--minutes", "10")[0] == 0
    finally:
        torch.set_num_threads(threads)
    assert len(losses["whole"]) == 5 and losses["split"] == losses["whole"]
    assert all(
        torch.equal(last_weights["whole"][k], last_weights["split"][k])
        for k in last_weights["whole"]
    )
    whole, split = (checkpoints.read_record(tmp_path / f"{n}.pt") for n in ("whole", "split"))
    assert whole["history"] == split["history"] and split["meta_steps_done"] == 5
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoints.resume_path(
        tmp_path / "split.pt"
    ).exists()  # finished: nothing to resume


@pytest.mark.usefixtures("needs_data")
def test_maml_accepts_six_shots_with_one_query(tmp_path, capsys):
    # validation episodes take the 14 drawings a class has left, not a fixed 15
    from helpers import maml

    threads = torch.get_num_threads()
    try:
        status, out, stderr = run_command(
            maml.main,
            [
                "omniglot",
                "--k-shot",
                "6",
                "--n-query",
                "1",
                "--meta-batch",
                "1",
                "--meta-steps",
                "1",
                "--val-episodes",
                "1",
                "--eval-steps",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "m.pt"),
            ],
            capsys,
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0, stderr
    model, record = maml.load_omniglot_checkpoint(tmp_path / "m.pt")
    assert "14 queries per class" in record["validation"] and record["settings"]["k_shot"] == 6


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
def test_sigterm_saves_a_resumable_run_and_says_how_to_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import checkpoints

    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "helpers.protonet",
        "--n-way",
        "5",
        "--episodes",
        "100000",
        "--val-way",
        "5",
        "--val-episodes",
        "2",
        "--val-every",
        "20",
        "--keep",
        "best",
        "--threads",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint",
        str(tmp_path / "x.pt"),
    ]
    process = subprocess.Popen(
        command,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    for line in process.stdout:  # wait for the first validation: training has started
        if line.startswith("episode 20:"):
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("python -m helpers.protonet: stopped at episode") and "Traceback" not in err
    )
    assert str(tmp_path / "x.resume.pt") in last and last.endswith(
        "--checkpoint " + str(tmp_path / "x.pt") + " --resume"
    )
    state, record = checkpoints.load(
        tmp_path / "x.resume.pt", lambda p: torch.load(p, weights_only=True), "a resume state"
    )
    assert record["status"] == "resumable" and state["history"]["episode"][-1] >= 20
    assert (
        checkpoints.read_record(tmp_path / "x.pt")["status"] == "interrupted"
    )  # the best weights so far, kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x.json",
        "x.pt",
        "x.resume.json",
        "x.resume.pt",
    ]


def test_pretraining_the_one_shot_embedding_stops_and_resumes_exactly():
    from helpers.episodes import FewShotDataset
    from helpers.one_shot import pretrain_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(60, 28, 28)).astype(np.uint8)
    data = FewShotDataset("toy", images, np.repeat(np.arange(6), 10), tuple("abcdef"))
    settings = dict(
        epochs=3, lr=1e-2, batch_size=16, val_per_class=2, max_shift=1, seed=0, progress=False
    )
    whole = pretrain_classifier(data, **settings)
    calls = {"n": 0}

    def stop_at_batch_5():
        calls["n"] += 1
        return calls["n"] == 5

    stopped = pretrain_classifier(data, **settings, should_stop=stop_at_batch_5)
    assert (
        stopped.stopped_state is not None and stopped.stopped_state["epoch"] == 1
    )  # 3 batches per epoch
    resumed = pretrain_classifier(data, **settings, resume=stopped.stopped_state)
    assert resumed.stopped_state is None and resumed.history == whole.history
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values())
    )


@pytest.mark.usefixtures("needs_data")
def test_the_one_shot_classifier_can_leave_out_the_twins_validation_alphabets(tmp_path, capsys):
    # 29 of the 30 background alphabets held out: one epoch over the one left is quick, and
    # the record names what was left out and scores the classes it kept
    import json

    from helpers import checkpoints, one_shot

    out = tmp_path / "c.pt"
    argv = ["--out", str(out), "--hold-out-alphabets", "29", "--epochs", "1", "--no-progress"]
    status, stdout, stderr = run_command(one_shot.main, argv, capsys)
    assert status == 0, stderr
    record = checkpoints.read_record(out)
    kept, held = one_shot.background_classes(29, 0)
    assert record["held_out_alphabets"] == held and len(set(held)) == 29
    assert {name.split("/")[0] for name in kept.class_names}.isdisjoint(held)
    assert record["validation"].startswith(f"{kept.n_classes}-way classification")
    assert 0 <= record[f"val_accuracy_{kept.n_classes}_way"] <= 1
    assert "of 1 of the 30 background alphabets" in record["what"]
    assert json.loads(stdout.strip().splitlines()[-1])["checkpoint"] == str(out)


def test_the_protonet_panel_says_what_zero_episodes_needs():
    from helpers.protonet import check_panel_settings

    values = {
        "lr": 1e-3,
        "episodes": 0,
        "distance": "euclidean",
        "train_n_way": 5,
        "test_n_way": 5,
        "k_shot": 1,
    }
    with pytest.raises(ValueError, match=r"^episodes=0 must be a whole number >= 1\.$"):
        check_panel_settings(values, None, None, 5)
    with pytest.raises(
        ValueError, match=r"^learning rate=inf must be a positive finite number such as 0\.001\.$"
    ):
        check_panel_settings({**values, "lr": float("inf"), "episodes": 10}, None, None, 5)


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
@pytest.mark.parametrize("keep", ["last", "best"])
def test_the_readme_command_keeps_the_committed_checkpoint(tmp_path, capsys, keep):
    # The README's ProtoNet command names the committed checkpoint; a short run must not replace it.
    import shutil
    from pathlib import Path

    from helpers import checkpoints, protonet

    committed = (
        Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "protonet_omniglot_1shot"
    )
    for suffix in (".pt", ".json"):
        shutil.copy(committed.with_suffix(suffix), tmp_path / f"protonet_omniglot_1shot{suffix}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    threads = torch.get_num_threads()
    try:
        status, out, err = run_command(
            protonet.main,
            [
                "--n-way",
                "5",
                "--k-shot",
                "1",
                "--episodes",
                "4",
                "--val-way",
                "5",
                "--val-episodes",
                "2",
                "--val-every",
                "2",
                "--keep",
                keep,
                "--threads",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--checkpoint",
                str(tmp_path / "protonet_omniglot_1shot.pt"),
            ],
            capsys,
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    assert {
        name: (tmp_path / name).read_bytes() for name in before
    } == before  # the committed pair, untouched
    beside = [p for p in tmp_path.glob("protonet_omniglot_1shot_*.pt")]
    assert len(beside) == 1 and f"this run saves to {beside[0]}" in out and "--overwrite" in out
    assert checkpoints.read_record(beside[0])["status"] == "complete"
