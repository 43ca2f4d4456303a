"""The wire contracts (genserve.protocol): what every side of the wire reads, checked against each other."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from genserve.errors import InvalidInputError
from genserve.protocol import CONTRACTS, EDIT_IMAGE, FACE_SWAP, OCR, TASKS, TEXT_TO_IMAGE


def test_the_stack_repository_configs_match_their_contracts():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import contract_mismatches, read_config

    checked = 0
    served_as = {**CONTRACTS, "ocr_ensemble": OCR, "ocr_bls": OCR}  # the OCR model not named ocr keeps its tensors
    for config_path in sorted(STACK_REPOSITORY_DIR.glob("*/config.pbtxt")):
        contract = served_as.get(config_path.parent.name)
        if contract is None:  # leaf models and ensemble steps: their tensors are the ONNX graph's own, or the flow's
            continue
        assert contract_mismatches(read_config(config_path), contract) == [], config_path
        checked += 1
    assert checked == 3  # face_swap and the two OCR models


def test_a_config_that_drifts_from_its_contract_is_caught():
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.triton.model_config import contract_mismatches, read_config

    config = read_config(STACK_REPOSITORY_DIR / "face_swap")
    config.input[1].optional = True
    del config.output[1]
    problems = contract_mismatches(config, FACE_SWAP)
    assert any("TARGET_IMAGE" in p for p in problems) and any("METADATA" in p for p in problems)


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
    out = FACE_SWAP.decode_response(FACE_SWAP.encode_response({"image": b"jpeg", "metadata": {"replaced": [0]}}))
    assert out == {"image": b"jpeg", "metadata": {"replaced": [0]}}


def test_in_process_objects_take_the_contract_fields():
    from genserve.diffusion.service import GenerationRequest
    from genserve.faceswap import SwapOptions

    swap = {f.name: f.default for f in FACE_SWAP.option_fields}
    assert {f.name: f.default for f in dataclasses.fields(SwapOptions)} == swap
    for contract in (TASKS["t2i"], TASKS["tie"], TASKS["vttie"]):
        assert {f.name for f in contract.fields} <= {f.name for f in dataclasses.fields(GenerationRequest)}


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
