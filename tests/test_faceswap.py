"""The face swap in-process, on real photos: identity, untouched background, no seams, options, bad input."""

from __future__ import annotations

import io
import itertools

import cv2
import numpy as np
import pytest
from bad_images import UNREADABLE_IMAGES
from PIL import Image
from swap_quality import hull_mask, psnr_outside, seam_share

from genserve.errors import InvalidInputError, NoFaceError
from genserve.faceswap import FaceSwapper, SwapOptions
from genserve.faceswap.swapper import UNRESTORED
from genserve.imaging import decode_image, encode_image

# Photos whose largest face is at least 80 px wide; the others' faces are 36-52 px.
LARGE_FACES = ["2008_001009.jpg", "2008_002506.jpg", "2008_001322.jpg"]


@pytest.fixture(scope="module")
def swapper() -> FaceSwapper:
    return FaceSwapper().load()


@pytest.fixture(scope="module")
def photos(faces_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(faces_dir.glob("*.jpg")) if path.name != "dogs.jpg"}


@pytest.fixture(scope="module")
def all_swaps(swapper, photos):
    """Every ordered pair of photos swapped once: (ori name, target name) -> (ori, result, ori face)."""
    results = {}
    for ori_name, target_name in itertools.permutations(photos, 2):
        ori = decode_image(photos[ori_name])
        target, _ = swapper.target_face(photos[target_name])
        result, _ = swapper.swap_arrays(ori, target, SwapOptions(compute_identity=False))
        results[ori_name, target_name] = (ori, result, swapper.analyzer.detect(ori)[0], target)
    return results


def identity_distances(swapper, ori, result, ori_face, target) -> tuple[float, float]:
    """dlib distance of the result's face to the target's face and to the face that was there before."""
    swapped = swapper.analyzer.refit(result, ori_face)
    descriptor = swapper.analyzer.descriptor(result, swapped)
    before = swapper.analyzer.descriptor(ori, ori_face)
    return float(np.linalg.norm(descriptor - target.descriptor)), float(np.linalg.norm(descriptor - before))


@pytest.mark.slow
def test_result_is_the_target_person_for_nearly_every_pair(swapper, all_swaps):
    closer = [identity_distances(swapper, *swap) for swap in all_swaps.values()]
    share = np.mean([to_target < to_ori for to_target, to_ori in closer])
    # dlib's verdict "same person" is a distance under 0.6.
    same_person = np.mean([to_target < 0.6 for to_target, _ in closer])
    assert share >= 0.9, f"result closer to the target than to the ori face in only {share:.0%} of pairs"
    assert same_person >= 0.8, f"result is the target's person by dlib's threshold in only {same_person:.0%} of pairs"


@pytest.mark.slow
@pytest.mark.parametrize("ori_name, target_name", list(itertools.permutations(LARGE_FACES, 2)))
def test_large_faces_always_take_the_target_identity(swapper, all_swaps, ori_name, target_name):
    # A target face much smaller than ori's is upscaled, and blur costs identity; both large here.
    to_target, to_ori = identity_distances(swapper, *all_swaps[ori_name, target_name])
    assert to_target < to_ori, f"{ori_name} <- {target_name}: {to_target:.3f} to target, {to_ori:.3f} to ori"


@pytest.mark.slow
def test_background_outside_the_face_is_unchanged(all_swaps):
    for (ori_name, target_name), (ori, result, face, _) in all_swaps.items():
        region = hull_mask(ori.shape, face.landmarks)
        # The swap may cover the forehead above the landmarks' hull: dilate by half the face size.
        dilate = int(np.sqrt(region.sum()) * 0.5)
        psnr = psnr_outside(ori, result, region, dilate)
        assert psnr >= 40.0, f"{ori_name} <- {target_name}: background PSNR {psnr:.1f} dB"


@pytest.mark.slow
@pytest.mark.parametrize("ori_name", ["2008_001009.jpg", "2008_002506.jpg"])
def test_no_seams_inside_the_face(all_swaps, ori_name):
    for (name, target_name), (ori, result, face, _) in all_swaps.items():
        if name == ori_name:
            share = seam_share(result, hull_mask(ori.shape, face.landmarks))
            assert share < 0.005, f"{ori_name} <- {target_name}: {share:.2%} of face pixels are outliers"


@pytest.mark.slow
def test_swap_adds_no_outliers_beyond_the_photos_own(swapper, all_swaps):
    """On small faces natural detail already exceeds 0.5%; the swap must not add to the busier of the two faces.

    The target face is measured at the size it is pasted at: shrunk, its detail gets denser.
    """
    for (ori_name, target_name), (ori, result, face, target) in all_swaps.items():
        region = hull_mask(ori.shape, face.landmarks)
        scale = np.sqrt(region.sum() / hull_mask(target.crop.shape, target.landmarks).sum())
        resized = cv2.resize(
            target.crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        target_region = hull_mask(resized.shape, target.landmarks * scale)
        baseline = max(seam_share(ori, region), seam_share(resized, target_region))
        assert seam_share(result, region) <= baseline + 0.005, f"{ori_name} <- {target_name}"


# Issue 13: pairs across scales. The photos whose largest face is 36-52 px wide, and the large-face
# photos enlarged (bicubic) so that their faces are 150-270 px: a large, sharp, well-lit face shrunk
# into a small one, and a small face enlarged into a large one.
SMALL_FACES = ["2007_007763.jpg", "2008_002079.jpg", "2008_002470.jpg", "2008_004176.jpg", "2008_007676.jpg"]


def enlarged(rgb: np.ndarray, factor: int) -> np.ndarray:
    return cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def scale_swaps(swapper, photos):
    """(direction, ori name, target name) -> (ori, result, ori face, target), for both directions of size."""

    def swap(ori, target):
        result, _ = swapper.swap_arrays(ori, target, SwapOptions(compute_identity=False))
        return ori, result, swapper.analyzer.detect(ori)[0], target

    swaps = {}
    for large in LARGE_FACES:
        large_face = swapper.analyze_target(enlarged(decode_image(photos[large]), 3))
        large_ori = enlarged(decode_image(photos[large]), 2)
        for small in SMALL_FACES:
            swaps["large into small", small, large] = swap(decode_image(photos[small]), large_face)
            swaps["small into large", large, small] = swap(large_ori, swapper.target_face(photos[small])[0])
    return swaps


def detail(rgb: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute difference of the grey image from its 1-pixel Gaussian blur, over the region: sharpness."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.0))[region].mean())


def clipped(rgb: np.ndarray, region: np.ndarray) -> float:
    """Share of the region's pixels with a channel at 250 or more, or every channel at 5 or less."""
    pixels = rgb[region]
    return float(((pixels.max(-1) >= 250) | (pixels.max(-1) <= 5)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["large into small", "small into large"])
def test_swaps_across_scales_add_no_speckle_and_keep_the_background(scale_swaps, direction):
    for (kind, ori_name, target_name), (ori, result, face, target) in scale_swaps.items():
        if kind != direction:
            continue
        region = hull_mask(ori.shape, face.landmarks)
        share, own = seam_share(result, region), seam_share(ori, region)
        assert share <= own + 0.003, f"{ori_name} <- {target_name}: {share:.2%} artifacts, ori's face {own:.2%}"
        target_region = hull_mask(target.crop.shape, target.landmarks)
        assert clipped(result, region) <= max(clipped(ori, region), clipped(target.crop, target_region)) + 0.005, (
            f"{ori_name} <- {target_name}: highlights or shadows clipped"
        )
        psnr = psnr_outside(ori, result, region, int(np.sqrt(region.sum()) * 0.5))
        assert psnr >= 40.0, f"{ori_name} <- {target_name}: background PSNR {psnr:.1f} dB"


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["large into small", "small into large"])
def test_swaps_across_scales_take_the_target_identity(swapper, scale_swaps, direction):
    closer = [
        np.subtract(*identity_distances(swapper, *swap)) < 0
        for (kind, _, _), swap in scale_swaps.items()
        if kind == direction
    ]
    assert np.mean(closer) >= 0.9, (
        f"{direction}: closer to the target than to ori in only {np.mean(closer):.0%} of pairs"
    )


@pytest.mark.slow
def test_small_faces_enlarged_are_not_blurrier_than_the_face_they_replace(scale_swaps):
    ratios = [
        detail(result, hull_mask(ori.shape, face.landmarks)) / detail(ori, hull_mask(ori.shape, face.landmarks))
        for (kind, _, _), (ori, result, face, _) in scale_swaps.items()
        if kind == "small into large"
    ]
    # Without detail matching (the swap of e61e30e) the median was 0.63.
    assert np.median(ratios) >= 0.8 and min(ratios) >= 0.5, [round(r, 2) for r in ratios]


def laplacian_variance(rgb: np.ndarray, box) -> float:
    """Sharpness as issue 33 measures it: the variance of the Laplacian of the grey image inside a box."""
    x0, y0, x1, y1 = box
    grey = cv2.cvtColor(rgb[max(0, y0) : y1, max(0, x0) : x1], cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.mark.slow
def test_a_small_target_face_in_a_large_one_keeps_detail_without_losing_identity(swapper, photos):
    """Issue 33: each small face (36-52 px) into each large face (89-108 px), both as photographed.

    The enlarged face had 0.45-0.96 of ori's sharpness inside ori's face box (7 of 15 pairs under 0.6,
    partly lifted by ori's own eyes showing through); now at least 0.6 each, with the identity (dlib
    distance to the target, the swapper's own score) as good as the rendering before (UNRESTORED), within
    0.005 of the mean (descriptor noise: a change no eye sees moves one pair's distance by up to 0.02).
    """
    ratios, distances = {}, {"now": [], "before": []}
    for ori_name in LARGE_FACES:
        ori = decode_image(photos[ori_name])
        for target_name in SMALL_FACES:
            target, _ = swapper.target_face(photos[target_name])
            result, metadata = swapper.swap_arrays(ori, target, SwapOptions())
            _, before = swapper.swap_arrays(ori, target, SwapOptions(), looks=(UNRESTORED,))
            box = metadata.ori_faces[0]["box"]
            ratio = laplacian_variance(result, box) / laplacian_variance(ori, box)
            (reported,) = metadata.sharpness  # the metadata says what the image shows
            assert reported["face"] == 0 and reported["ratio"] == pytest.approx(ratio, abs=2e-3)
            ratios[ori_name, target_name] = round(ratio, 2)
            distances["now"].append(metadata.identity[0]["distance"])
            distances["before"].append(before.identity[0]["distance"])
    now, before = np.mean(distances["now"]), np.mean(distances["before"])
    print(f"sharpness min {min(ratios.values()):.2f}, identity distance mean {now:.4f} (before {before:.4f})")
    assert min(ratios.values()) >= 0.6, ratios
    assert now <= before + 0.005, f"identity distance {now:.4f}, before {before:.4f}"


def test_candidates_keep_the_best_rendering_without_artifacts(swapper, photos):
    ori = decode_image(photos["2008_001322.jpg"])
    target, _ = swapper.target_face(photos["2008_002506.jpg"])
    result, metadata = swapper.swap_arrays(ori, target, SwapOptions(candidates=4, compute_identity=False))
    (choice,) = metadata.candidates
    tried = choice.tried
    assert len(tried) == 4 and len({c["cosine"] for c in tried}) > 1  # the variants do differ
    clean = [i for i, c in enumerate(tried) if c["clean"]]
    assert choice.chosen == max(clean, key=lambda i: tried[i]["cosine"])
    # The image returned is the chosen candidate: its identity and artifacts are the ones reported for it.
    (score,) = metadata.identity
    assert (score["cosine"], score["distance"]) == (
        tried[choice.chosen]["cosine"],
        tried[choice.chosen]["distance"],
    )
    face = swapper.analyzer.refit(ori, swapper.analyzer.detect(ori, landmarks=False, coarse=True)[0])
    assert metadata.artifacts[0]["share"] == pytest.approx(
        seam_share(result, hull_mask(ori.shape, face.landmarks)), abs=1e-5
    )
    assert metadata.artifacts[0]["share"] == tried[choice.chosen]["artifact_share"]
    _, default = swapper.swap_arrays(ori, target, SwapOptions())  # candidate 0 is the default rendering
    assert default.identity[0]["cosine"] == tried[0]["cosine"]


def test_classic_triangle_pasting_would_fail_the_seam_measure(photos):
    """The seam measure can fail: pasting triangles one by one leaves dark lines along their edges."""
    ori = decode_image(photos["2008_002506.jpg"])
    swapper = FaceSwapper().load()
    face = swapper.analyzer.detect(ori)[0]
    damaged = ori.copy()
    triangles = cv2.Subdiv2D((0, 0, ori.shape[1], ori.shape[0]))
    for x, y in face.landmarks:
        triangles.insert((float(x), float(y)))
    for x0, y0, x1, y1, x2, y2 in triangles.getTriangleList().astype(int):
        cv2.polylines(damaged, [np.array([[x0, y0], [x1, y1], [x2, y2]])], True, (0, 0, 0), 1)
    assert seam_share(damaged, hull_mask(ori.shape, face.landmarks)) > 0.005


def test_metadata_reports_faces_identity_and_timings(swapper, photos):
    encoded, metadata = swapper.swap(
        photos["2008_002506.jpg"], photos["2008_001009.jpg"], SwapOptions(ori_identity=True)
    )
    assert decode_image(encoded).shape == decode_image(photos["2008_002506.jpg"]).shape
    assert metadata.faces_found == {"ori": 3, "target": 2}
    assert metadata.replaced == [0]
    (score,) = metadata.identity
    assert score["cosine"] > score["ori_cosine"] and score["distance"] < score["ori_distance"]
    (artifacts,) = metadata.artifacts
    assert artifacts["face"] == 0 and artifacts["share"] <= artifacts["ori_share"] + 0.003
    assert {"decode_ori", "target", "detect_ori", "swap", "identity", "encode", "total"} <= set(metadata.timings_ms)


def test_a_swap_reports_the_figures_of_the_image_it_returns_and_score_gives_the_same(swapper, photos):
    """One definition (issue 33): a swap reports the identity and sharpness of the JPEG it returns, landmarks
    fitted on it in ori's face box; scoring that JPEG (what check-submission sends) gives the same figures."""
    for ori_name, target_name in (("2008_001322.jpg", "2008_002079.jpg"), ("2008_002506.jpg", "2008_001009.jpg")):
        ori, target = photos[ori_name], photos[target_name]
        encoded, metadata = swapper.swap(ori, target, SwapOptions(jpeg_quality=80, ori_identity=True))
        scored = swapper.score(ori, target, encoded, SwapOptions(ori_identity=True))
        assert scored.identity == metadata.identity and scored.sharpness == metadata.sharpness
        (identity,) = metadata.identity
        assert identity["cosine"] > identity["ori_cosine"]
        # The figures are the JPEG's, not the rendering's before encoding (they differed by up to 0.02).
        box = metadata.ori_faces[0]["box"]
        ratio = laplacian_variance(decode_image(encoded), box) / laplacian_variance(decode_image(ori), box)
        assert metadata.sharpness[0]["ratio"] == pytest.approx(ratio, abs=2e-3)
    # Another image scored for the same pair: its own figures (someone else's face: a low identity).
    other = swapper.score(photos["2008_002506.jpg"], photos["2008_001009.jpg"], photos["2008_002506.jpg"])
    assert other.identity[0]["cosine"] < metadata.identity[0]["cosine"] and other.sharpness[0]["ratio"] == 1.0
    with pytest.raises(InvalidInputError, match="the result image is 360x480, ori 500x375"):
        swapper.score(photos["2008_002506.jpg"], photos["2008_001009.jpg"], photos["2008_001009.jpg"])


def test_repeated_target_is_served_from_the_cache(photos):
    swapper = FaceSwapper().load()
    _, first = swapper.swap(photos["2008_002506.jpg"], photos["2008_001009.jpg"])
    _, second = swapper.swap(photos["2008_001322.jpg"], photos["2008_001009.jpg"])
    assert not first.target_cache_hit and second.target_cache_hit
    assert second.timings_ms["target"] < first.timings_ms["target"] / 10


def test_face_index_and_all_faces_choose_which_faces_change(swapper, photos):
    ori_bytes = photos["2008_002506.jpg"]
    ori = decode_image(ori_bytes)
    faces = swapper.analyzer.detect(ori)
    assert len(faces) == 3
    target, _ = swapper.target_face(photos["2008_001009.jpg"])

    def changed(result):
        return [
            bool((result[hull_mask(ori.shape, f.landmarks)] != ori[hull_mask(ori.shape, f.landmarks)]).any())
            for f in faces
        ]

    second, metadata = swapper.swap_arrays(ori, target, SwapOptions(face_index=1, compute_identity=False))
    assert metadata.replaced == [1] and changed(second) == [False, True, False]
    every, metadata = swapper.swap_arrays(ori, target, SwapOptions(all_faces=True, compute_identity=False))
    assert metadata.replaced == [0, 1, 2] and changed(every) == [True, True, True]
    with pytest.raises(InvalidInputError, match="face_index 3 asked for, but the ori image has 3 face"):
        swapper.swap_arrays(ori, target, SwapOptions(face_index=3))


def test_small_faces_are_found_by_upsampled_detection(swapper, photos):
    ori = decode_image(photos["2008_002506.jpg"])
    small = cv2.resize(ori, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)  # faces of about 30 px
    faces = swapper.analyzer.detect(small)
    assert faces and faces[0].box[2] - faces[0].box[0] < 40
    target, _ = swapper.target_face(photos["2008_001009.jpg"])
    result, _ = swapper.swap_arrays(small, target, SwapOptions(compute_identity=False))
    assert (result != small).any()


def test_photo_without_a_face_is_refused(swapper, faces_dir, photos):
    dogs = (faces_dir / "dogs.jpg").read_bytes()
    with pytest.raises(NoFaceError, match="no face found in the ori image"):
        swapper.swap(dogs, photos["2008_001009.jpg"])
    with pytest.raises(NoFaceError, match="no face found in the target image"):
        swapper.swap(photos["2008_001009.jpg"], dogs)


@UNREADABLE_IMAGES
def test_corrupt_or_empty_bytes_are_refused(swapper, photos, data, message):
    with pytest.raises(InvalidInputError, match=f"ori image {message}"):
        swapper.swap(data, photos["2008_001009.jpg"])


def test_truncated_jpeg_is_refused(swapper, photos):
    data = photos["2008_002506.jpg"]
    with pytest.raises(InvalidInputError):
        swapper.swap(data[: len(data) // 50], photos["2008_001009.jpg"])


def test_huge_image_is_refused_before_decoding(swapper, huge_jpeg, photos):
    with pytest.raises(InvalidInputError, match="more pixels than are accepted"):
        swapper.swap(huge_jpeg, photos["2008_001009.jpg"])


@pytest.mark.parametrize(
    "options, message",
    [
        ('{"face_index": -1}', "face_index must be"),
        ('{"face_index": "two"}', "face_index must be an integer"),
        ('{"output_format": "gif"}', "output_format must be"),
        ('{"output_format": 5}', "output_format must be text"),
        ('{"jpeg_quality": 0}', "jpeg_quality must be"),
        ('{"colour": true}', "unknown option"),
        ('{"candidates": 0}', "candidates must be between 1 and 6"),
        ('{"candidates": 7}', "candidates must be between 1 and 6"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_options_are_refused(options, message):
    """As the served model decodes a request: the contract's checks, before any work."""
    from genserve.protocol import FACE_SWAP

    tensors = {
        "ORI_IMAGE": np.array([b"x"], object),
        "TARGET_IMAGE": np.array([b"x"], object),
        "OPTIONS": np.array([options.encode()], object),
    }
    with pytest.raises(InvalidInputError, match=message):
        FACE_SWAP.decode_request(tensors.get)


def test_in_process_options_are_checked_like_served_ones(swapper, photos):
    with pytest.raises(InvalidInputError, match="jpeg_quality must be"):
        swapper.swap(photos["2008_002506.jpg"], photos["2008_001009.jpg"], SwapOptions(jpeg_quality=101))


def test_output_formats(swapper, photos):
    for output_format, magic in [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")]:
        encoded, _ = swapper.swap(
            photos["2008_002506.jpg"],
            photos["2008_001009.jpg"],
            SwapOptions(output_format=output_format, compute_identity=False),
        )
        assert encoded.startswith(magic)


def test_png_with_alpha_and_greyscale_inputs_are_accepted(swapper, photos):
    rgb = decode_image(photos["2008_002506.jpg"])
    rgba = io.BytesIO()
    Image.fromarray(rgb).convert("RGBA").save(rgba, format="PNG")
    grey = encode_image(cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB), "png")
    for data in (rgba.getvalue(), grey):
        _, metadata = swapper.swap(data, photos["2008_001009.jpg"], SwapOptions(compute_identity=False))
        assert metadata.replaced == [0]
