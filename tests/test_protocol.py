"""The wire contracts (genserve.protocol): what every side of the wire reads, checked against each other."""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest

from genserve.errors import InvalidInputError
from genserve.metadata import Choice, GenerationMetadata, SwapMetadata
from genserve.protocol import CONTRACTS, EDIT_IMAGE, EDIT_TEXT, FACE_SWAP, OCR, TASKS, TEXT_TO_IMAGE


def test_the_stack_repository_configs_match_their_contracts():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import contract_mismatches
    from genserve.triton.served_config import served_config

    checked = 0
    served_as = {**CONTRACTS, "ocr_ensemble": OCR, "ocr_bls": OCR}  # the OCR model not named ocr keeps its tensors
    for config_path in sorted(STACK_REPOSITORY_DIR.glob("*/config.pbtxt")):
        contract = served_as.get(config_path.parent.name)
        if contract is None:  # leaf models and ensemble steps: their tensors are the ONNX graph's own, or the flow's
            continue
        assert contract_mismatches(served_config(config_path.parent), contract) == [], config_path
        checked += 1
    assert checked == 3  # face_swap and the two OCR models


def test_stack_python_models_take_their_tensors_from_the_contract_alone():
    """face_swap and ocr declare no tensors in config.pbtxt: Triton's auto-complete adds the contract's
    (the ensemble must write its own: Triton does not complete an ensemble; the test above checks it)."""
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import read_config

    for name in ("face_swap", "ocr"):
        config = read_config(STACK_REPOSITORY_DIR / name)
        assert not config.input and not config.output, name


def test_a_config_that_drifts_from_its_contract_is_caught():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import contract_mismatches
    from genserve.triton.served_config import served_config

    config = served_config(STACK_REPOSITORY_DIR / "face_swap")
    config.input[1].optional = True
    del config.output[1]
    problems = contract_mismatches(config, FACE_SWAP)
    assert any("TARGET_IMAGE" in p for p in problems) and any("METADATA" in p for p in problems)


@pytest.mark.server
def test_the_served_stack_models_declare_their_contract(triton_server):
    """What Triton serves (auto-complete from the contract) is the contract, and what the offline reader
    (served_config: perf_analyzer, the tests) derives is the same."""
    import tritonclient.grpc as grpcclient

    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import contract_mismatches, declared_tensors
    from genserve.triton.served_config import served_config

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    for name, contract in (("face_swap", FACE_SWAP), ("ocr", OCR)):
        served = client.get_model_config(name).config
        assert contract_mismatches(served, contract) == [], name
        offline = served_config(STACK_REPOSITORY_DIR / name)
        for kind in ("input", "output"):
            assert declared_tensors(served, kind) == declared_tensors(offline, kind), (name, kind)
    client.close()


@pytest.mark.server
def test_a_config_that_declares_a_tensor_unlike_its_contract_is_refused_at_load(tmp_path):
    from tritonclient.grpc import model_config_pb2

    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.errors import ServerError
    from genserve.server import TritonServer
    from genserve.triton.model_config import copy_model, read_config, write_config

    repository = tmp_path / "repository"
    copy_model(STACK_REPOSITORY_DIR / "ocr", repository, instances=1)
    config = read_config(repository / "ocr")
    config.input.add(name="IMAGE", data_type=model_config_pb2.TYPE_STRING, dims=[2])  # the contract: [1]
    write_config(config, repository / "ocr")
    with pytest.raises(ServerError, match="ocr"), TritonServer.on_loopback(repository, log_path=tmp_path / "t.log"):
        pass


def test_request_round_trip_fills_defaults():
    tensors = EDIT_IMAGE.encode_request(prompt="make it winter", image=b"\x89PNG", steps=4, seed=2**40, strength=0.5)
    assert tensors["SEED"].dtype == np.int64 and tensors["STEPS"].dtype == np.int32
    assert json.loads(tensors["OPTIONS"][0]) == {"strength": 0.5}
    values = EDIT_IMAGE.decode_request(tensors.get)
    assert values["prompt"] == "make it winter" and values["image"] == b"\x89PNG"
    assert (values["steps"], values["seed"], values["strength"]) == (4, 2**40, 0.5)
    assert values["num_images"] == 1 and values["guidance"] is None  # the contract's default, the pipeline's


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({}, "prompt \\(PROMPT\\) is missing"),
        ({"PROMPT": np.array([b"\xff\xfe"], object)}, "prompt is not UTF-8"),
        ({"PROMPT": np.array([b"a", b"b"], object)}, "exactly one value"),
        ({"PROMPT": np.array([b"a"], object), "STEPS": np.array([0], np.int32)}, "steps must be between 1 and 1000"),
        ({"PROMPT": np.array([b"a"], object), "GUIDANCE": np.array([np.nan], np.float32)}, "finite"),
        (
            {"PROMPT": np.array([b"a"], object), "OPTIONS": np.array([b'{"strength": 0}'], object)},
            "strength must be above 0",
        ),
        ({"PROMPT": np.array([b"a"], object), "OPTIONS": np.array([b'{"stength": 1}'], object)}, "unknown option"),
        (
            {"PROMPT": np.array([b"a"], object), "OPTIONS": np.array([b'{"max_sequence_length": 1.5}'], object)},
            "must be an integer",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(tensors, message):
    with pytest.raises(InvalidInputError, match=message):
        TEXT_TO_IMAGE.decode_request(tensors.get)


def test_response_round_trip():
    arrays = OCR.encode_response({"boxes": np.zeros((1, 4, 2)), "texts": ["营业"], "scores": [0.9]})
    assert arrays["BOXES"].dtype == np.float32 and arrays["SCORES"].dtype == np.float64
    out = OCR.decode_response(arrays)
    assert out["texts"] == ["营业"] and out["boxes"].shape == (1, 4, 2)
    metadata = SwapMetadata([500, 375], {"ori": 1, "target": 1}, [], [0], {}, identity=None)
    out = FACE_SWAP.decode_response(FACE_SWAP.encode_response({"image": b"jpeg", "metadata": metadata}))
    assert out == {"image": b"jpeg", "metadata": metadata}


def test_metadata_is_typed_on_both_sides_and_its_json_keys_are_the_attributes():
    """The server fills a dataclass, the wire carries its attributes as JSON keys (None left out), the
    client decodes the same dataclass; keys it does not know (a newer server's) are kept, not lost."""
    metadata = GenerationMetadata("flux", "vttie", "FluxKontextPipeline", 7, 4, 4, 2.5, 64, 32, 1, new_text="CLOSED")
    document = json.loads(TEXT_TO_IMAGE.encode_response({"images": [], "metadata": metadata})["METADATA"][0])
    assert document["seed"] == 7 and document["new_text"] == "CLOSED" and "old_text" not in document
    document["added_later"] = {"x": 1}
    decoded = GenerationMetadata.from_json(document)
    assert decoded.seed == 7 and decoded.extra == {"added_later": {"x": 1}} and decoded.to_json() == document


def test_candidates_have_one_shape_for_every_task():
    """A face swap's renderings of each face and a text edit's edits of each image are both one Choice per
    output (index, chosen, tried): the batch runner's quality columns read them alike."""
    from genserve.client.batch import quality_record
    from genserve.client.tasks import Task

    swap = SwapMetadata([1, 1], {"ori": 1, "target": 1}, [], [0], {}, candidates=[Choice(0, 1, [{}, {"cosine": 1}])])
    edit = GenerationMetadata("flux", "vttie", "P", 1, 1, 1, 1.0, 8, 8, 1, candidates=[Choice(0, 1, [{}, {}])])
    for metadata, task_type in ((swap, "deepfake"), (edit, "vttie")):
        (choice,) = type(metadata).from_json(json.loads(json.dumps(metadata.to_json()))).candidates
        assert choice == Choice(index=0, chosen=1, tried=choice.tried) and len(choice.tried) == 2
        record = quality_record(Task("1", task_type, "", "", "", line=2), metadata)
        assert (record["candidates"], record["chosen_candidate"]) == (2, 1)


def _class_mismatches(cls: type, fields) -> list[str]:
    """How a request class differs from the contract fields it mirrors: its attributes in order (required
    fields first, then the contract's order), each typed (None-able where None is the default) and
    defaulted as the field is; required fields have no default."""
    hints = typing.get_type_hints(cls)
    ordered = sorted(fields, key=lambda f: not f.required)
    expected = [(f.name, f.python_type, dataclasses.MISSING if f.required else f.default) for f in ordered]
    written = [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls)]
    problems = [
        f"{cls.__name__}: {have} where the contract says {want}"
        for have, want in zip(written, expected)
        if have != want
    ]
    if len(written) != len(expected):
        problems.append(f"{cls.__name__}: {len(written)} attributes for {len(expected)} fields")
    return problems


def _merged_fields(*contracts):
    """The fields of several contracts, each name once (every contract spelling it alike), required only
    where every contract requires it: what one request class serving all of them holds."""
    merged = {}
    for contract in contracts:
        for f in contract.fields:
            first = merged.setdefault(f.name, f)
            assert (first.type, first.default) == (f.type, f.default), f"{f.name} differs in {contract.model}"

    def everywhere_required(name: str) -> bool:
        return all(any(f.name == name and f.required for f in c.fields) for c in contracts)

    return [dataclasses.replace(f, required=everywhere_required(f.name)) for f in merged.values()]


def test_request_classes_are_held_to_their_contracts():
    """SwapOptions and GenerationRequest are written out; they hold exactly the fields of the contracts they
    mirror (names, order, types, defaults), as the ensemble's config.pbtxt is held to OCR above."""
    from genserve.diffusion.service import GenerationRequest
    from genserve.faceswap import SwapOptions
    from genserve.protocol import DIFFUSION_TASKS
    from genserve.schema import Field

    assert _class_mismatches(SwapOptions, FACE_SWAP.option_fields) == []
    generation = _merged_fields(*(TASKS[task] for task in DIFFUSION_TASKS))
    assert [f.name for f in generation if f.required] == ["prompt"]  # image: edits only; t2i takes none
    assert _class_mismatches(GenerationRequest, generation) == []
    # A field added to a contract, or a default changed there, is a mismatch until the class says the same.
    grown = (*FACE_SWAP.option_fields, Field("sharpen", "bool", "", default=True))
    assert _class_mismatches(SwapOptions, grown) == ["SwapOptions: 8 attributes for 9 fields"]
    changed = tuple(dataclasses.replace(f, default=90) if f.name == "jpeg_quality" else f for f in grown[:-1])
    assert len(_class_mismatches(SwapOptions, changed)) == 1


def test_a_task_row_needs_what_its_contract_requires(monkeypatch):
    from genserve.client.tasks import Task
    from genserve.schema import Field

    row = Task("1", "deepfake", "", "a.jpg", "", line=2)
    assert row.problem() == "deepfake needs target_image"
    assert Task("2", "t2i", " ", "", "", line=3).problem() == "t2i needs a prompt"
    optional = tuple(
        dataclasses.replace(f, required=False) if f.name == "target_image" else f for f in FACE_SWAP.fields
    )
    monkeypatch.setitem(TASKS, "deepfake", dataclasses.replace(FACE_SWAP, fields=optional))
    assert row.problem() is None
    with_prompt = (*TEXT_TO_IMAGE.fields, Field("ori_image", "image", "", tensor="ORI", required=True))
    monkeypatch.setitem(TASKS, "t2i", dataclasses.replace(TEXT_TO_IMAGE, fields=with_prompt))
    assert Task("3", "t2i", "a fox", "", "", line=4).problem() == "t2i needs ori_image"


@pytest.mark.parametrize(
    "command, contract, skip",
    [
        ("t2i", TEXT_TO_IMAGE, ("prompt",)),
        ("edit", EDIT_IMAGE, ("prompt", "image")),
        ("deepfake", FACE_SWAP, ("ori_image", "target_image", "output_format")),
    ],
)
def test_every_field_is_a_command_line_option(command, contract, skip, capsys):
    from genserve.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    for field in contract.fields:
        if field.name not in skip:
            flag = field.name.replace("_", "-")
            assert f"--{flag}" in text or f"--no-{flag}" in text, field.name


def test_a_face_swap_requests_images_are_bounded_together(faces_dir):
    """A result to score (RESULT_IMAGE) travels beside ori and target: the three images together stay within
    what two may be, so the largest request still fits the server's byte limit (below)."""
    import dataclasses

    ori, target = (faces_dir / "2008_002506.jpg").read_bytes(), (faces_dir / "2008_001009.jpg").read_bytes()
    values = {"ori_image": ori, "target_image": target, "result_image": ori}
    assert FACE_SWAP.max_image_bytes is not None and FACE_SWAP.check(values)["result_image"] == ori
    tight = dataclasses.replace(FACE_SWAP, max_image_bytes=2 * len(ori) + len(target) - 1)
    with pytest.raises(InvalidInputError, match=r"the images of one face_swap request are \d+ bytes together"):
        tight.check(values)


def test_the_largest_request_a_contract_allows_fits_the_servers_byte_limit():
    """genserve.front refuses requests above config.MAX_REQUEST_BYTES: every contract's largest request
    (images at their byte limit, text fields at their length in 4-byte UTF-8, OPTIONS at its limit, and
    a generous 1 KiB of protobuf framing per tensor) must fit below it."""
    from genserve import config

    def largest(contract) -> int:
        sizes = {"image": config.MAX_IMAGE_BYTES, "text": 4 * config.MAX_TEXT_CHARS}
        tensors = [field for field in contract.fields if field.tensor is not None]
        images = sum(sizes["image"] for field in tensors if field.type == "image")
        if contract.max_image_bytes is not None:  # the images' bytes together are bounded too
            images = min(images, contract.max_image_bytes)
        others = sum(sizes.get(field.type, 8) for field in tensors if field.type != "image")
        return images + others + config.MAX_OPTIONS_BYTES + 1024 * (len(tensors) + 2)

    sizes = {name: largest(contract) for name, contract in CONTRACTS.items()}
    assert max(sizes.values()) <= config.MAX_REQUEST_BYTES, sizes
    assert sizes["face_swap"] > config.MAX_REQUEST_BYTES / 2  # sized from it, not far above it


def test_the_client_s_docstrings_list_their_contract_s_fields():
    """The task methods' docstrings are written out; each lists every optional field of its contract (the
    required ones are the method's arguments), in the contract's order, with its type and help, so that
    ``help(Client.swap_face)`` cannot drift from the contract."""
    import inspect
    import re

    from genserve.client.client import TaskMethods

    documented = {
        "swap_face": FACE_SWAP,
        "text_to_image": TEXT_TO_IMAGE,
        "edit_image": EDIT_IMAGE,
        "edit_text": EDIT_TEXT,
    }
    for name, contract in documented.items():
        doc = inspect.getdoc(getattr(TaskMethods, name))
        heading = f"Keyword parameters ({contract.model} fields, :mod:`genserve.protocol`):"
        assert heading in doc, name
        entries = re.findall(r"^``(\w+)`` \((\w+)\): (.*(?:\n .*)*)", doc.split(heading)[1], re.MULTILINE)
        listed = [(field, kind, " ".join(text.split())) for field, kind, text in entries]
        # Images are the methods' arguments (result_image: score_face_swap's), the other fields keywords.
        options = [(f.name, f.type, f.help) for f in contract.fields if not f.required and f.type != "image"]
        assert listed == options, name
