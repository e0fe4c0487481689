"""The `openai` Python client against a real gateway: its exceptions carry the gateway's message."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.reliability
openai = pytest.importorskip("openai")


def client(cluster, key: str | None = None):
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=key or cluster.keys["acme"], max_retries=0)


def test_openai_client_shows_the_gateway_message_for_a_bad_request(cluster):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client(cluster).embeddings.create(model="embedder", input=[])
    err = info.value
    assert "must hold at least one text" in str(err)
    assert err.body["message"] == "input: must hold at least one text"
    assert (err.code, err.param, err.type) == ("invalid_input", "input", "invalid_request_error")


def test_openai_client_shows_unknown_models_and_bad_keys(cluster):
    with pytest.raises(openai.NotFoundError) as info:
        client(cluster).embeddings.create(model="no-such-model", input="x")
    assert "no-such-model" in info.value.body["message"]
    with pytest.raises(openai.AuthenticationError) as info:
        client(cluster, key="not-a-key").embeddings.create(model="embedder", input="x")
    assert "invalid API key" in info.value.body["message"]
    assert info.value.type == "authentication_error"
