"""The bench's process bookkeeping: a case that needs a gateway starts only the model servers not yet
running, and a group never starts a process it already runs (the older one would outlive the bench)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bench._lab import Lab, RunConfig
from bench._procs import BenchError, Group, Proc


@dataclass
class _Home:
    path: Path
    real: bool = True


def _lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Lab, list[list[str]]]:
    started: list[list[str]] = []

    def start(group: Group, *procs: Proc) -> None:  # the bookkeeping of Group.start, no processes
        Group.check_not_running(group, procs)
        started.append([p.name for p in procs])
        group.procs.update({p.name: p for p in procs})

    lab = Lab(RunConfig.make(quick=False, work_dir=tmp_path), say=lambda _: None, force_python_load=True)
    home = _Home(tmp_path / "home")
    home.path.mkdir()
    monkeypatch.setattr(lab, "home", lambda kind: home)
    monkeypatch.setattr(lab, "_spec", lambda home, name: Proc(name, [], {}, f"http://127.0.0.1/{name}"))
    monkeypatch.setattr(Group, "start", start)
    return lab, started


def test_a_gateway_case_after_a_server_case_starts_only_the_missing_server(tmp_path, monkeypatch) -> None:
    lab, started = _lab(tmp_path, monkeypatch)
    first = lab.need("main", "server-embedder", "server-embedder-unbatched")
    second = lab.need("main", "server-embedder", "gateway")
    assert started == [["server-embedder", "server-embedder-unbatched"], ["server-classifier"], ["gateway"]]
    assert second["server-embedder"] is first["server-embedder"]  # kept, not started again and forgotten


def test_a_group_refuses_to_start_a_process_it_already_runs(tmp_path) -> None:
    group = Group(tmp_path)
    group.procs["server-embedder"] = Proc("server-embedder", [], {}, "http://127.0.0.1:1")
    with pytest.raises(BenchError, match="server-embedder already running"):
        group.start(Proc("server-embedder", [], {}, "http://127.0.0.1:2"))
