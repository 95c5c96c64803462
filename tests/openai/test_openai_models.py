"""GET /v1/models: the repository's text-generation models (inputs text_input and
max_tokens, output text_output) with their context length; others are not listed."""

import httpx
import openai
import pytest


def test_list_only_text_models(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"ensemble", "tensorrt_llm_bls", "oai_script", "oai_slow"}
    assert all(m.object == "model" for m in models.values())
    # max_position_embeddings of the tiny checkpoint's config.json
    assert models["ensemble"].model_dump()["max_model_len"] == 256


def test_retrieve_model(client):
    assert client.models.retrieve("tensorrt_llm_bls").id == "tensorrt_llm_bls"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("preprocessing")
    assert err.value.body["code"] == "model_not_found"


def test_catalog_finds_tokenizers(oai):
    from llmserve.frontends.openai.models_discovery import ModelCatalog

    catalog = ModelCatalog(oai.server)
    ensemble = catalog.resolve("ensemble")  # tokenizer_dir of its preprocessing step
    bls = catalog.resolve("tensorrt_llm_bls")  # of the models it calls
    assert ensemble.tokenizer_dir == bls.tokenizer_dir == oai.ckpt
    assert ensemble.decoupled and ensemble.has_input("stream")
    assert catalog.tokenizer(ensemble) is catalog.tokenizer(bls)  # cached per folder


def test_same_port_as_kserve(oai):
    base = oai.base_url.removesuffix("/v1")
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.get(f"{base}/v1/models").json()["object"] == "list"
