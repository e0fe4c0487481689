"""The gateway routes a version only once a model server reports it loaded."""

from __future__ import annotations

from models.registry import AliasState
from online.gateway.fleet import ServedView
from online.gateway.routing import Router


def _view(loaded: dict[str, list[str] | None]) -> ServedView:
    async def fetch(url: str):
        versions = loaded[url]
        return None if versions is None else {"served": {"loaded": versions}}

    return ServedView(lambda: {m: [m] for m in loaded}, fetch)


async def test_a_canary_no_server_has_loaded_gets_no_traffic_until_it_is_loaded():
    loaded = {"clf": ["1"]}
    view = _view(loaded)
    await view.refresh()
    state = AliasState("clf", stable="1", canary="2", canary_weight=1.0)
    routed = view.effective({"clf": state})["clf"]
    assert Router().route("clf", state=routed, routing_key="k").version == "1"
    loaded["clf"] = ["1", "2"]
    await view.refresh()
    routed = view.effective({"clf": state})["clf"]
    assert Router().route("clf", state=routed, routing_key="k").arm == "canary"


async def test_a_shadow_not_loaded_is_not_called():
    view = _view({"emb": ["1"]})
    await view.refresh()
    assert view.effective({"emb": AliasState("emb", stable="1", shadow="2")})["emb"].shadow is None


async def test_a_promoted_version_still_loading_leaves_the_previous_stable_serving():
    loaded = {"emb": ["1"]}
    view = _view(loaded)
    await view.refresh()
    assert view.effective({"emb": AliasState("emb", stable="1")})["emb"].stable == "1"
    assert view.effective({"emb": AliasState("emb", stable="2")})["emb"].stable == "1"
    loaded["emb"] = ["1", "2"]
    await view.refresh()
    assert view.effective({"emb": AliasState("emb", stable="2")})["emb"].stable == "2"


async def test_a_server_that_cannot_be_asked_leaves_the_registry_state_as_is():
    view = _view({"emb": None})
    await view.refresh()
    state = AliasState("emb", stable="1", canary="2", canary_weight=0.5)
    assert view.effective({"emb": state})["emb"] == state


async def test_a_version_counts_as_loaded_when_any_replica_has_it_and_only_those_replicas_get_it():
    replies = {"a": {"served": {"loaded": ["1", "2"]}}, "b": {"served": {"loaded": ["1"]}}}

    async def fetch(url):
        return replies[url]

    view = ServedView(lambda: {"emb": ["a", "b"]}, fetch)
    await view.refresh()
    assert view.loaded["emb"] == {"1", "2"}
    assert view.serves("a", "2") and not view.serves("b", "2") and view.serves("b", "1")


def test_server_metrics_labels_name_the_model_and_replica_never_the_address(tmp_path):
    import json

    from online.gateway.runtime import ServerDirectory

    path = tmp_path / "deployments.json"
    path.write_text(json.dumps({"embedder": ["http://10.0.0.1:8101", "http://10.0.0.2:8101"],
                                "classifier": "http://10.0.0.3:8102"}))
    servers = ServerDirectory({}, path)
    assert servers.label("http://10.0.0.2:8101") == "embedder#2"
    assert servers.label("http://10.0.0.3:8102") == "classifier"
    assert servers.label("http://elsewhere") == "unknown"
