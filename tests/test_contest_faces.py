"""Face swaps on contest-shaped inputs: LFW's framing, 250x250 crops centred on one face about 110 px wide.

The contest's deepfake pairs are LFW photos. :func:`genserve.demo.lfw.lfw_crops` frames the bundled
photos' faces that way (every face of 60 px or more: 8 crops, 56 ordered pairs); every pair is swapped
by the stack's swapper and by the classic recipe (benchmarks/face_swap.py), and both results are scored
with the same dlib descriptors.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from genserve.benchmarks.face_swap import ClassicFaceSwap
from genserve.demo.lfw import LFW_FACE_PX, LFW_SIZE, lfw_crops
from genserve.faceswap import FaceSwapper, SwapOptions
from genserve.imaging import decode_image

pytestmark = pytest.mark.slow
MAX_ARTIFACT_SHARE = 0.005  # 0.5 % of the face's pixels


@pytest.fixture(scope="module")
def crops(faces_dir) -> dict[str, bytes]:
    return lfw_crops(sorted(faces_dir.glob("*.jpg")))


@pytest.fixture(scope="module")
def swapper() -> FaceSwapper:
    return FaceSwapper().load()


@pytest.fixture(scope="module")
def swaps(crops, swapper):
    """(ori, target) -> (ours: (result RGB, metadata), classic result RGB or None when it failed)."""
    classic = ClassicFaceSwap()
    results = {}
    for ori, target in itertools.permutations(sorted(crops), 2):
        encoded, metadata = swapper.swap(crops[ori], crops[target], SwapOptions())
        try:
            theirs = decode_image(classic.swap(crops[ori], crops[target]))
        except Exception:  # noqa: BLE001 - the baseline failing a pair counts against it
            theirs = None
        results[ori, target] = (decode_image(encoded), metadata), theirs
    return results


def identity_cosine(swapper: FaceSwapper, result: np.ndarray, target: bytes) -> float:
    """Cosine of the result's largest face to the target's face (dlib descriptors), the contest's SC proxy."""
    faces = swapper.analyzer.detect(result)
    if not faces:
        return 0.0
    descriptor = swapper.analyzer.descriptor(result, faces[0])
    wanted = swapper.target_face(target)[0].descriptor
    return float(descriptor @ wanted / (np.linalg.norm(descriptor) * np.linalg.norm(wanted)))


def test_crops_are_framed_like_lfw_and_the_face_is_found_in_each(crops, swapper):
    assert len(crops) >= 8
    for name, jpeg in crops.items():
        rgb = decode_image(jpeg)
        assert rgb.shape == (LFW_SIZE, LFW_SIZE, 3), name
        face = swapper.analyzer.detect(rgb)[0]  # the largest: the one the crop is centred on
        (x0, y0, x1, y1), centre = face.box, LFW_SIZE / 2
        assert abs((x0 + x1) / 2 - centre) < 15 and abs((y0 + y1) / 2 - centre) < 15, (name, face.box)
        assert 0.85 * LFW_FACE_PX <= x1 - x0 <= 1.25 * LFW_FACE_PX, (name, face.box)


def test_every_pair_is_swapped_without_artifacts(swaps):
    assert len(swaps) >= 56
    for pair, ((_, metadata), _) in swaps.items():
        assert metadata.replaced, pair
        share = metadata.artifacts[0]["share"]
        assert share < MAX_ARTIFACT_SHARE, f"{pair}: artifact share {share:.4f}"


def test_identity_is_better_than_the_classic_recipes_on_the_same_pairs(swaps, swapper, crops):
    ours, classic = [], []
    for (_ori, target), ((result, _), theirs) in swaps.items():
        ours.append(identity_cosine(swapper, result, crops[target]))
        classic.append(0.0 if theirs is None else identity_cosine(swapper, theirs, crops[target]))
    ours, classic = np.array(ours), np.array(classic)
    print(
        f"identity cosine on {len(ours)} LFW-framed pairs: ours mean {ours.mean():.4f} (min {ours.min():.4f}), "
        f"classic mean {classic.mean():.4f} (min {classic.min():.4f}); ours better in {np.mean(ours > classic):.0%}"
    )
    assert ours.mean() > classic.mean()
    assert np.mean(ours > classic) >= 0.75
