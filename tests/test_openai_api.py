"""The OpenAI Images API on the HTTP port (genserve.front.openai_api), with the official `openai` SDK as the
client, against the real server on the tiny SD pipeline: the same images as genserve's own client asks for,
OpenAI's error shape and statuses, the front's byte limit, and the admin rules unchanged."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures_server import loopback_server
from PIL import Image

from genserve import config
from genserve.client import Client

pytestmark = [pytest.mark.server, pytest.mark.slow]

openai = pytest.importorskip("openai", reason="the official OpenAI SDK is part of the test extra")

T2I, EDIT = "sd_text_to_image", "sd_edit_image"
EXTRAS = {"steps": 3, "guidance": 6.5, "seed": 17, "negative_prompt": "blurry"}


@pytest.fixture(scope="module")
def server(sd_repository, tmp_path_factory):
    with loopback_server(tmp_path_factory, sd_repository) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(server):
    """The SDK pointed at the HTTP port's /v1, retries off (a test sees each answer as the server gave it)."""
    with openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0, timeout=600) as sdk:
        yield sdk


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def photo() -> bytes:
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generations_are_the_task_s_own_images(sdk, server):
    """n images of the size asked for, genserve's options as extra body fields: pixel for pixel what
    genserve's client gets for the same request (the same Triton request behind both)."""
    answer = sdk.images.generate(
        model=T2I, prompt="a lighthouse at dusk", n=2, size="64x32", response_format="b64_json", extra_body=EXTRAS
    )
    assert len(answer.data) == 2 and answer.size == "64x32" and answer.output_format == "png"
    images = [base64.b64decode(item.b64_json) for item in answer.data]
    assert Image.open(io.BytesIO(images[0])).size == (64, 32)
    metadata = answer.model_extra["genserve"]
    assert (metadata["seed"], metadata["steps"], metadata["guidance"]) == (17, 3, 6.5)
    with Client(server.grpc_url) as client:
        expected = client.text_to_image("a lighthouse at dusk", model=T2I, num_images=2, width=64, height=32, **EXTRAS)
    for got, want in zip(images, expected):
        assert np.array_equal(pixels(got), pixels(want.encoded))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_a_url_answer_is_a_short_lived_path_on_the_same_port(sdk, server):
    answer = sdk.images.generate(model=T2I, prompt="a red fox", response_format="url", extra_body={"steps": 2})
    (item,) = answer.data
    assert item.url.startswith(f"http://{server.http_url}/v1/images/files/") and item.b64_json is None
    with urllib.request.urlopen(item.url, timeout=60) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(response.read())).size == (64, 64)  # the model's default size
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(item.url.replace("/files/", "/files/x"), timeout=60)
    assert missing.value.code == 404


def test_edits_take_the_image_as_a_file(sdk, server):
    options = {"steps": 4, "strength": 0.5, "seed": 3}
    answer = sdk.images.edit(
        model=EDIT, image=("photo.png", photo(), "image/png"), prompt="make it night", extra_body=options
    )
    (item,) = answer.data
    assert answer.size == "64x48"  # the input's size, as the model's default
    with Client(server.grpc_url) as client:
        expected = client.edit_image(photo(), "make it night", model=EDIT, **options)
    assert np.array_equal(pixels(base64.b64decode(item.b64_json)), pixels(expected.encoded))
    sized = sdk.images.edit(
        model=EDIT,
        image=("photo.png", photo(), "image/png"),
        prompt="make it night",
        size="32x32",
        n=2,
        extra_body={"steps": 4},
    )
    assert sized.size == "32x32" and len(sized.data) == 2


def test_models_lists_the_image_models_with_their_sizes(sdk):
    models = {model.id: model for model in sdk.models.list().data}
    assert set(models) == {T2I, EDIT}  # not the streaming variants, not the leaves
    assert models[T2I].model_extra["task"] == "t2i" and models[EDIT].model_extra["endpoint"] == "/v1/images/edits"
    assert models[T2I].model_extra["sizes"] == {"max_side": 256, "multiple_of": 4, "default": "64x64"}
    assert sdk.models.retrieve(T2I).id == T2I
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("sd_unet")


def error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    assert set(error.body) == {"message", "type", "param", "code"}, error.body  # OpenAI's shape
    return error


def test_errors_have_openai_s_shape_and_status(sdk):
    bad_size = error_of(lambda: sdk.images.generate(model=T2I, prompt="x", size="66x64"))
    assert bad_size.status_code == 400 and bad_size.body["type"] == "invalid_request_error"
    assert "width 66 is not served by sd_text_to_image" in bad_size.body["message"]
    assert "multiples of 4 up to 256" in bad_size.body["message"]  # the sizes it serves
    too_large = error_of(lambda: sdk.images.generate(model=T2I, prompt="x", size="512x512"))
    assert too_large.status_code == 400 and "up to 256" in too_large.body["message"]
    unknown = error_of(lambda: sdk.images.generate(model="dall-e-3", prompt="x"))
    assert unknown.status_code == 400 and unknown.body["code"] == "model_not_found"
    assert f"served here: {T2I}" in unknown.body["message"]
    wrong_task = error_of(lambda: sdk.images.generate(model=EDIT, prompt="x"))
    assert wrong_task.status_code == 400 and "not a served text-to-image model" in wrong_task.body["message"]
    typo = error_of(lambda: sdk.images.generate(model=T2I, prompt="x", extra_body={"step": 3}))
    assert typo.status_code == 400 and "unknown field(s) step" in typo.body["message"]
    assert "steps" in typo.body["message"]
    # The contract's own checks and messages, and the model's own (the server refused it: INVALID_ARGUMENT).
    contract = error_of(lambda: sdk.images.generate(model=T2I, prompt="x", extra_body={"steps": 0}))
    assert contract.status_code == 400 and "steps must be between 1 and 1000" in contract.body["message"]
    served = error_of(lambda: sdk.images.generate(model=T2I, prompt="   ", extra_body={"steps": 2}))
    assert served.status_code == 400 and "the prompt is empty" in served.body["message"]
    no_image = error_of(lambda: sdk.images.edit(model=EDIT, image=("a.png", b"not an image", "image/png"), prompt="x"))
    assert no_image.status_code == 400 and "not a readable image" in no_image.body["message"]


def test_the_byte_limit_is_the_front_s(server):
    """Refused from the declared length, before a byte of the body is read (413, OpenAI's shape)."""
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", "/v1/images/edits")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(config.MAX_REQUEST_BYTES + 1))
    connection.endheaders()
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "above this server's limit" in body["error"]["message"]


def test_the_admin_rules_stand(server, sdk):
    """The API reads only what anyone may (configs, statistics): the repository index still wants the key."""
    assert sdk.models.list().data
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v2/repository/index", body=b"{}")
    assert connection.getresponse().status == 403
    connection.close()
    other = error_of(lambda: sdk.chat.completions.create(model=T2I, messages=[{"role": "user", "content": "hi"}]))
    assert other.status_code == 404 and "OpenAI Images API" in other.body["message"]


def test_an_overloaded_model_answers_503(server):
    """A burst beyond what the model takes (its workers and backlog): the rest refused at once with 503,
    which the SDK counts as retriable; every other request answered."""
    sdk = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0, timeout=600)
    start = threading.Barrier(20)

    def one(_):
        start.wait()
        try:
            sdk.images.generate(model=T2I, prompt="a storm", size="128x128", extra_body={"steps": 4})
            return "ok"
        except openai.APIStatusError as error:
            return error

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(one, range(20)))
    refused = [outcome for outcome in outcomes if outcome != "ok"]
    assert refused, "no request was refused"
    for error in refused:
        assert error.status_code == 503 and error.body["code"] == "overloaded", error.body
        assert error.body["type"] == "server_error"
    assert outcomes.count("ok") >= 4
