"""Which models a server loads with those it is asked for (issue 30, item 4): what they call, or a refusal."""

from __future__ import annotations

import shutil

import pytest

from genserve.config import STACK_REPOSITORY_DIR
from genserve.errors import ServerError
from genserve.load_order import with_callees
from genserve.model_repositories import local_config
from genserve.triton.model_config import model_parameters, read_config, required_callees


def test_a_model_is_served_with_every_model_it_calls():
    def config_of(name):
        return local_config([STACK_REPOSITORY_DIR], name)

    assert with_callees(["ocr"], config_of) == ["ocr", "ocr_det", "ocr_cls", "ocr_rec"]
    assert with_callees(["face_swap"], config_of) == ["face_swap", "face_embedding"]
    assert set(with_callees(["ocr_ensemble"], config_of)) == {
        "ocr_ensemble",
        *(f"ocr_{step}" for step in ("prepare", "det", "crop", "cls", "upright", "rec", "read")),
    }


def test_the_stack_models_name_what_they_call():
    """The BLS targets the model classes call by default are the ones their configs declare."""
    from genserve.ocr.engine import CLS, DET, REC

    assert required_callees(read_config(STACK_REPOSITORY_DIR / "ocr")) == [DET.name, CLS.name, REC.name]
    face_swap = read_config(STACK_REPOSITORY_DIR / "face_swap")
    assert required_callees(face_swap) == [model_parameters(face_swap)["embedding_model"]]


def test_a_model_whose_callee_is_in_no_repository_is_refused_by_name(tmp_path):
    shutil.copytree(STACK_REPOSITORY_DIR / "ocr", tmp_path / "ocr")
    with pytest.raises(ServerError, match=r"ocr_det \(called by ocr\), ocr_cls \(called by ocr\)"):
        with_callees(["ocr"], lambda name: local_config([tmp_path], name))
    # With a repository Triton reads itself (object storage), the callee may be there: no refusal.
    assert with_callees(["ocr"], lambda name: local_config([tmp_path], name), complete=False) == ["ocr"]
