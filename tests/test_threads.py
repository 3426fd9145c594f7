"""helpers.device: the CPUs a process may use, and the threads chosen from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import device


def _cgroup(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000"}, None),  # cgroup v2, no limit
        ({"cpu.max": "150000 100000"}, 1.5),  # cgroup v2, one and a half CPUs (a Binder pod)
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, no limit
        (
            {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"},
            2.0,
        ),  # v1, two CPUs
        ({}, None),  # no cgroup files at all (macOS, Windows)
    ],
)
def test_cgroup_quota_is_read_from_v1_and_v2(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert device._cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_a_quota_caps_the_visible_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert device.available_cpus(_cgroup(tmp_path / "a", {"cpu.max": "max 100000"})) == 16
    assert (
        device.available_cpus(_cgroup(tmp_path / "b", {"cpu.max": "150000 100000"})) == 1
    )  # 1.5 CPUs: 1 thread's worth
    assert (
        device.available_cpus(_cgroup(tmp_path / "c", {"cpu.max": "50000 100000"})) == 1
    )  # never 0
    assert device.available_cpus(_cgroup(tmp_path / "d", {"cpu.max": "400000 100000"})) == 4


def test_default_threads_rule() -> None:
    assert [device.default_threads(n) for n in (1, 2, 3, 4, 16)] == [1, 1, 2, 3, 15]


def test_set_threads_takes_the_argument_then_the_variable_then_the_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(device.THREADS_VARIABLE, raising=False)
        assert device.set_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv(device.THREADS_VARIABLE, "1")
        assert device.set_threads() == 1 and torch.get_num_threads() == 1
        assert device.set_threads(2) == 2  # an explicit argument wins over the variable
        monkeypatch.delenv(device.THREADS_VARIABLE)
        assert device.set_threads() == device.default_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["two", "0", "-1"])
def test_a_bad_threads_variable_is_named_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(device.THREADS_VARIABLE, bad)
    with pytest.raises(
        ValueError, match=rf"^{device.THREADS_VARIABLE}=.* must be a whole number >= 1\.$"
    ):
        device.set_threads()


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True])
def test_bad_threads_argument(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^threads=.* must be a whole number >= 1\.$"):
        device.set_threads(bad)


def test_setup_sets_the_threads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv(device.THREADS_VARIABLE, raising=False)
    monkeypatch.delenv(device.DEVICE_VARIABLE, raising=False)
    try:
        device.setup(seed=0, threads=1)
        assert torch.get_num_threads() == 1
        assert "cpu (1 thread)" in capsys.readouterr().out or torch.cuda.is_available()
    finally:
        torch.set_num_threads(before)
