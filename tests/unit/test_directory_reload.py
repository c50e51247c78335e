"""The live registry and the directory reloader, on real files (no broker needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.hub._directory_reload import DirectoryReloadConfig, DirectoryReloader, LiveRegistry
from broker.protocol import Registry, RegistryError, load_directory

SAMPLE = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"


def test_the_live_registry_answers_every_public_member_from_the_current_registry() -> None:
    # A member added to Registry but not here would answer from the empty base: keep them in step.
    public = {name for name in vars(Registry) if not name.startswith("_")} | {"__len__", "__contains__"}
    assert public <= set(vars(LiveRegistry))


def test_a_swap_replaces_everything_at_once_and_leaves_snapshots_alone() -> None:
    sample = load_directory(SAMPLE)
    live = LiveRegistry(Registry(()))
    before = live.current
    assert len(live) == 0
    assert live.swap(sample) is before
    assert len(live) == len(sample)
    assert "bank-icbc" in live
    assert live.get("bank-icbc") is sample.get("bank-icbc")
    assert live.bank_for_account("6222020200001234567") is sample.get("bank-icbc")
    assert live.agencies() == sample.agencies()
    assert live.jurisdiction == "CN"
    assert len(before) == 0  # what a caller took before the swap did not change under it


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "directory.toml"
    shutil.copyfile(SAMPLE, path)
    return path


def _replace(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


async def test_reload_keeps_the_old_registry_when_the_file_breaks(directory: Path) -> None:
    reloader = DirectoryReloader(directory=directory, state_overlay=None, config=DirectoryReloadConfig())
    first = reloader.registry.current
    _replace(directory, 'jurisdiction = "CN"', 'jurisdiction = "China"')
    with capture_logs() as logs:
        assert await reloader.reload() is False
    assert reloader.registry.current is first
    [failed] = logs
    assert failed["event"] == "directory.reload_failed"
    assert (failed["file"], failed["field"]) == (str(directory), "directory.jurisdiction")

    _replace(directory, 'jurisdiction = "China"', 'jurisdiction = "CN"')
    with capture_logs() as logs:
        assert await reloader.reload() is True
    assert reloader.registry.current is not first
    [done] = logs
    assert done["event"] == "directory.reloaded"
    assert (done["agencies"], done["added"], done["removed"]) == (len(first), [], [])


def test_a_broken_directory_fails_the_start(directory: Path) -> None:
    directory.write_text("[directory]\nversion = 2\n", encoding="utf-8")
    with pytest.raises(RegistryError, match=r"directory\.version"):
        DirectoryReloader(directory=directory, state_overlay=None)


async def test_an_operator_overlay_must_exist_and_is_named_when_it_breaks(
    directory: Path, tmp_path: Path
) -> None:
    overlay = tmp_path / "operator-keys.toml"
    overlay.write_text("", encoding="utf-8")
    reloader = DirectoryReloader(
        directory=directory, state_overlay=tmp_path / "absent.toml", overlays=[overlay]
    )
    os.unlink(overlay)
    with capture_logs() as logs:
        assert await reloader.reload() is False
    assert logs[0]["file"] == str(overlay)
