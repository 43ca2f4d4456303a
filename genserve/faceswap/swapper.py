"""The deepfake task: put the face of the *target* image into the *ori* image, keeping ori's scene.

:class:`FaceSwapper` is the whole task as one in-process object: the Triton model
``model_repository/face_swap`` wraps it, and tests and benchmarks call it directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from genserve.errors import InvalidInputError, NoFaceError
from genserve.faceswap.blend import (
    alpha_blend,
    alpha_ramp,
    face_outline,
    feathered_mask,
    feature_mask,
    match_color,
    match_detail,
    match_grain,
    midline_weight,
    mirrored,
    restore_sharpness,
    side_stretch,
    skin_forehead_height,
    skin_likelihood,
    skin_weights,
    target_geometry,
    warp_region,
    with_forehead,
)
from genserve.faceswap.faces import Face, FaceAnalyzer, identity_similarity
from genserve.faceswap.measures import artifact_share, sharpness
from genserve.imaging import decode_image, encode_image
from genserve.metadata import Choice, SwapMetadata
from genserve.protocol import FACE_SWAP, MAX_SWAP_CANDIDATES

# Feather width and light-matching blur, as fractions of the face's size (sqrt of its hull area).
FEATHER_FRACTION = 0.1
LIGHT_SIGMA_FRACTION = 0.2
# How far the inner features move to the target's proportions (1: all the way); see target_geometry.
GEOMETRY_STRENGTH = 0.8
# Features (eyes, brows, nostrils, lips) are grown by this fraction of the face's size when left out of skin statistics.
FEATURE_MARGIN_FRACTION = 0.03
# A target face is resampled to the destination's size first when the warp would shrink it below this.
SHRINK_BELOW_SCALE = 0.9
# A half of the face that the warp widens this much more than the other is drawn from the mirrored other
# half; the two meet in a ramp this wide (fraction of the face's size) along the midline.
MIRROR_ABOVE_STRETCH = 2.0
MIRROR_BAND_FRACTION = 0.15
# Within this fraction of the face's size from its outline, only skin is pasted (see _paste).
SKIN_ONLY_BORDER_FRACTION = 0.2
# The target's face is kept cropped with this margin (fraction of its box) around its landmarks.
TARGET_CROP_MARGIN = 0.35
# The share of ori's sharpness (variance of the Laplacian in ori's face box) that the detail steps bring a
# softer face to (issue 33: an enlarged small face measured 0.19). Higher costs identity as dlib measures it:
# a sharp face moves away from the descriptor of the small, soft photo it came from (docs/contest.md, "Detail").
SHARPNESS_TARGET = 0.65
# ... on faces this wide (ori's detection box) and wider. A smaller face's detail is a pixel or two, and the
# identity score's 150 px chip enlarges the face and any grain added to it: on the 35 pairs of the bundled
# photos whose ori face is 36-52 px wide, restoring cost 0.013 of dlib distance to the target on average;
# on the 21 whose ori face is 89-108 px, nothing (docs/contest.md, "Detail").
RESTORE_MIN_FACE_PX = 80
# The unsharp mask that restores it works at this fraction of the enlargement (a face enlarged 3x is
# smeared over about 3 pixels), and at least at 1 pixel.
SHARPEN_SIGMA_FRACTION = 0.5
# A candidate has visible artifacts when its artifact share exceeds ori's own face's by more than this
# (0.3 percentage points: the bound the tests hold the default rendering to).
ARTIFACT_TOLERANCE = 0.003


@dataclass(frozen=True)
class Look:
    """How a face is rendered: the settings that the candidates of a request vary."""

    geometry_strength: float = GEOMETRY_STRENGTH  # see blend.target_geometry
    light_sigma_fraction: float = LIGHT_SIGMA_FRACTION  # scale of ori's lighting carried onto the face
    match_detail: bool = True  # blur or sharpen the face to ori's level of fine detail (and the steps below)
    whole_features: bool = True  # near the outline, eyes, brows, nostrils and lips pasted whole, not mixed with ori's
    restore_detail: bool = True  # grain and sharpness a small target lacks, to SHARPNESS_TARGET of ori's (issue 33;
    # faces of RESTORE_MIN_FACE_PX and wider)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# The renderings tried for ``candidates: N``: the first N. The default rendering first.
VARIANTS = (
    Look(),
    Look(geometry_strength=1.0),
    Look(light_sigma_fraction=0.35),
    Look(geometry_strength=1.0, light_sigma_fraction=0.35),
    Look(match_detail=False),
    Look(geometry_strength=0.5),
)
assert len(VARIANTS) == MAX_SWAP_CANDIDATES, "the contract's maximum of candidates is the number of variants"
# The rendering before issue 33 (features mixed with ori's near the outline, no grain, no sharpening): for
# comparisons in tests and benchmarks.
UNRESTORED = Look(whole_features=False, restore_detail=False)


@dataclass(frozen=True)
class SwapOptions:
    """What a swap may ask for beyond the two images: one attribute per option field of the served
    contract (genserve.protocol.FACE_SWAP), typed and defaulted there; tests/test_protocol.py holds it
    to them. ``candidates`` renders that many VARIANTS."""

    face_index: int | None = None
    all_faces: bool = False
    output_format: str = "jpeg"
    jpeg_quality: int = 95
    color_transfer: bool = True
    compute_identity: bool = True
    ori_identity: bool = False
    candidates: int = 1

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SwapOptions:
        """The options among a request's checked values (see ``FACE_SWAP.decode_request``)."""
        return cls(**{name: values[name] for name in OPTION_NAMES if values.get(name) is not None})

    def validate(self) -> None:
        """InvalidInputError for a value the served model would refuse."""
        FACE_SWAP.check({name: getattr(self, name) for name in OPTION_NAMES}, partial=True)

    @property
    def single_face(self) -> bool:
        """Only ori's largest face is replaced."""
        return not self.all_faces and not self.face_index


OPTION_NAMES = tuple(field.name for field in FACE_SWAP.option_fields)


@dataclass
class TargetFace:
    """The identity to paste: a crop of the target image around its largest face, and what was measured."""

    crop: np.ndarray
    landmarks: np.ndarray  # in crop coordinates
    descriptor: np.ndarray
    face: Face  # in the target image's coordinates
    faces_found: int
    forehead_height: float  # see blend.skin_forehead_height


class FaceSwapper:
    """Swap faces with dlib's 68 landmarks and OpenCV; see :mod:`genserve.faceswap.blend` for the method.

    Target faces are cached by the SHA-256 of their encoded bytes, so a repeated identity (the usual
    case in a task file) is decoded, detected and described once.
    """

    def __init__(self, analyzer: FaceAnalyzer | None = None, target_cache_size: int = 64):
        self.analyzer = analyzer or FaceAnalyzer()
        self._cache: OrderedDict[str, TargetFace] = OrderedDict()
        self._cache_size = target_cache_size
        self._cache_lock = threading.Lock()

    def load(self) -> FaceSwapper:
        self.analyzer.load()
        return self

    # --- the task ----------------------------------------------------------------------------------

    def swap(self, ori: bytes, target: bytes, options: SwapOptions | None = None) -> tuple[bytes, SwapMetadata]:
        """Encoded ori and target images in, the encoded result and its metadata out.

        The identity and sharpness reported are those of the image returned, as it will be read: decoded,
        each replaced face's landmarks fitted on it in ori's face box (:meth:`score` measures any image so,
        and gives the same figures for this one: one definition, one number for one image). The artifact
        share is the rendering's, before encoding; the renderings' own scores stay in ``candidates``.
        """
        options = options or SwapOptions()
        options.validate()
        timings: dict[str, float] = {}
        started = time.perf_counter()

        clock = time.perf_counter()
        ori_rgb = decode_image(ori, what="ori image")
        timings["decode_ori"] = _ms_since(clock)

        clock = time.perf_counter()
        target_face, cache_hit = self.target_face(target)
        timings["target"] = _ms_since(clock)

        # The identity reported is the returned image's (below): the rendering is scored only to choose.
        result, metadata = self.swap_arrays(ori_rgb, target_face, options, timings, score_renders=False)
        metadata.target_cache_hit = cache_hit

        clock = time.perf_counter()
        encoded = encode_image(result, options.output_format, quality=options.jpeg_quality)
        timings["encode"] = _ms_since(clock)
        clock = time.perf_counter()
        faces = {
            index: Face(box=tuple(metadata.ori_faces[index]["box"]), landmarks=None) for index in metadata.replaced
        }
        self._measure(metadata, ori_rgb, decode_image(encoded, what="result"), faces, target_face, options)
        timings["measure"] = _ms_since(clock)
        timings["total"] = _ms_since(started)
        return encoded, metadata

    def score(self, ori: bytes, target: bytes, result: bytes, options: SwapOptions | None = None) -> SwapMetadata:
        """The figures a swap reports for the image it returns, for any ``result`` of putting ``target``'s face
        into ``ori`` (made here, by hand or by another tool): per replaced face (chosen in ori as a swap
        chooses them), the identity to the target, the sharpness inside ori's face box and the artifact share
        of ``result``, landmarks fitted on it in ori's face box. ``genserve check-submission`` sends this."""
        options = options or SwapOptions()
        options.validate()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        ori_rgb = decode_image(ori, what="ori image")
        result_rgb = decode_image(result, what="result image")
        if result_rgb.shape != ori_rgb.shape:
            (height, width), (ori_height, ori_width) = result_rgb.shape[:2], ori_rgb.shape[:2]
            raise InvalidInputError(
                f"the result image is {width}x{height}, ori {ori_width}x{ori_height}: a face swap keeps ori's size"
            )
        target_face, cache_hit = self.target_face(target)
        clock = time.perf_counter()
        ori_faces, faces = self.replaced_faces(ori_rgb, options)
        timings["detect_ori"] = _ms_since(clock)
        metadata = SwapMetadata(
            image_size=[int(ori_rgb.shape[1]), int(ori_rgb.shape[0])],
            faces_found={"ori": len(ori_faces), "target": target_face.faces_found},
            ori_faces=[face.as_dict() for face in ori_faces],
            replaced=list(faces),
            target_face=target_face.face.as_dict(),
            target_cache_hit=cache_hit,
        )
        clock = time.perf_counter()
        for index, face in faces.items():
            share = artifact_share(result_rgb, face.landmarks)
            ori_share = artifact_share(ori_rgb, face.landmarks)
            metadata.artifacts.append({"face": index, "share": round(share, 5), "ori_share": round(ori_share, 5)})
        self._measure(
            metadata, ori_rgb, result_rgb, faces, target_face, dataclasses.replace(options, compute_identity=True)
        )
        timings["measure"] = _ms_since(clock)
        timings["total"] = _ms_since(started)
        metadata.timings_ms = timings
        return metadata

    def _measure(
        self,
        metadata: SwapMetadata,
        ori_rgb: np.ndarray,
        result_rgb: np.ndarray,
        faces: dict[int, Face],
        target: TargetFace,
        options: SwapOptions,
    ) -> None:
        """The sharpness (and with ``compute_identity`` the identity) of each replaced face of ``result_rgb``:
        landmarks fitted on it in the face's box in ori; ori's own identity kept where it was asked for."""
        asked = {entry["face"]: entry for entry in metadata.identity or []}
        metadata.sharpness = [
            _sharpness_entry(index, sharpness(result_rgb, face.box), sharpness(ori_rgb, face.box))
            for index, face in faces.items()
        ]
        if not options.compute_identity:
            return
        metadata.identity = []
        for index, face in faces.items():
            score = self._identity(result_rgb, face, target)
            if options.ori_identity:
                before = asked.get(index) or {}
                if "ori_cosine" not in before:
                    ori_face = face if face.landmarks is not None else self.analyzer.refit(ori_rgb, face)
                    found = identity_similarity(self.analyzer.descriptor(ori_rgb, ori_face), target.descriptor)
                    before = {"ori_cosine": found["cosine"], "ori_distance": found["distance"]}
                score |= {key: before[key] for key in ("ori_cosine", "ori_distance")}
            metadata.identity.append({"face": index, **score})

    def replaced_faces(self, rgb: np.ndarray, options: SwapOptions) -> tuple[list[Face], dict[int, Face]]:
        """Every face of ``rgb`` (largest first, without landmarks) and, by index, those the options choose,
        with landmarks. Only the largest face needs the coarse search; only the faces used need landmarks."""
        found = self.analyzer.detect(rgb, landmarks=False, coarse=options.single_face)
        if not found:
            raise NoFaceError("no face found in the ori image")
        return found, {index: self.analyzer.refit(rgb, found[index]) for index in self._choose(found, options)}

    def swap_arrays(
        self,
        ori_rgb: np.ndarray,
        target: TargetFace,
        options: SwapOptions,
        timings: dict[str, float] | None = None,
        *,
        looks: tuple[Look, ...] | None = None,
        score_renders: bool = True,
    ) -> tuple[np.ndarray, SwapMetadata]:
        """The swap on an RGB array; returns the RGB result and metadata (with ``timings_ms``).

        ``looks``: the renderings to try (default: the first ``options.candidates`` of VARIANTS), e.g.
        ``(UNRESTORED,)`` to compare with the rendering before issue 33. ``score_renders`` false: the
        rendering's identity is not scored unless candidates are chosen by it (the caller scores the result).

        Per replaced face the metadata reports the artifact share (``artifacts``), the sharpness inside
        ori's face box against ori's own (``sharpness``), the identity score (``identity``: when asked, or
        when candidates are scored) and, with ``candidates`` > 1, every candidate's scores and which one
        was kept (``candidates``).
        """
        timings = {} if timings is None else timings
        clock = time.perf_counter()
        ori_faces, faces = self.replaced_faces(ori_rgb, options)
        chosen = list(faces)
        timings["detect_ori"] = _ms_since(clock)

        looks = VARIANTS[: options.candidates] if looks is None else looks
        scored = options.compute_identity or len(looks) > 1
        score_each = len(looks) > 1 or (options.compute_identity and score_renders)
        metadata = SwapMetadata(
            image_size=[int(ori_rgb.shape[1]), int(ori_rgb.shape[0])],
            faces_found={"ori": len(ori_faces), "target": target.faces_found},
            ori_faces=[face.as_dict() for face in ori_faces],
            replaced=chosen,
            target_face=target.face.as_dict(),
            identity=[] if scored else None,
            candidates=[] if len(looks) > 1 else None,
        )
        timings["swap"] = timings["identity"] = 0.0
        result = ori_rgb
        for index in chosen:
            face = faces[index]
            renders = []
            for look in looks:
                clock = time.perf_counter()
                render = self._paste(result, face, target, options.color_transfer, look)
                share = artifact_share(render, face.landmarks)
                timings["swap"] += _ms_since(clock)
                clock = time.perf_counter()
                score = self._identity(render, face, target) if score_each else {}
                timings["identity"] += _ms_since(clock)
                renders.append((render, share, score, look))
            ori_share = artifact_share(ori_rgb, face.landmarks)
            best = _best_candidate([(share, score) for _, share, score, _ in renders], ori_share)
            result, share, score, _ = renders[best]
            metadata.artifacts.append({"face": index, "share": round(share, 5), "ori_share": round(ori_share, 5)})
            ori_sharpness = sharpness(ori_rgb, face.box)
            metadata.sharpness.append(_sharpness_entry(index, sharpness(result, face.box), ori_sharpness))
            if scored:
                if options.ori_identity:
                    clock = time.perf_counter()
                    before = identity_similarity(self.analyzer.descriptor(ori_rgb, face), target.descriptor)
                    score = score | {"ori_cosine": before["cosine"], "ori_distance": before["distance"]}
                    timings["identity"] += _ms_since(clock)
                metadata.identity.append({"face": index, **score})
            if len(looks) > 1:
                tried = [
                    {
                        **look.as_dict(),
                        **score,
                        "artifact_share": round(share, 5),
                        "sharpness": _sharpness_entry(index, sharpness(render, face.box), ori_sharpness)["ratio"],
                        "clean": _is_clean(share, ori_share),
                    }
                    for render, share, score, look in renders
                ]
                metadata.candidates.append(Choice(index=index, chosen=best, tried=tried))
        timings["swap"], timings["identity"] = round(timings["swap"], 2), round(timings["identity"], 2)
        if not scored:
            del timings["identity"]
        metadata.timings_ms = timings
        return result, metadata

    def target_face(self, target: bytes) -> tuple[TargetFace, bool]:
        """The target's largest face, from the cache when these bytes were seen before."""
        key = hashlib.sha256(target).hexdigest()
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        target_face = self.analyze_target(decode_image(target, what="target image"))
        with self._cache_lock:
            self._cache[key] = target_face
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return target_face, False

    def analyze_target(self, rgb: np.ndarray) -> TargetFace:
        faces = self.analyzer.detect(rgb, landmarks=False)
        if not faces:
            raise NoFaceError("no face found in the target image")
        face = self.analyzer.refit(rgb, faces[0])
        descriptor = self.analyzer.descriptor(rgb, face)
        x0, y0, x1, y1 = _expand(face.landmarks, TARGET_CROP_MARGIN, rgb.shape)
        return TargetFace(
            crop=rgb[y0:y1, x0:x1].copy(),
            landmarks=face.landmarks - (x0, y0),
            descriptor=descriptor,
            face=face,
            faces_found=len(faces),
            forehead_height=skin_forehead_height(rgb, face.landmarks),
        )

    # --- steps ---------------------------------------------------------------------------------------

    @staticmethod
    def _choose(faces: list[Face], options: SwapOptions) -> list[int]:
        if options.all_faces:
            return list(range(len(faces)))
        index = options.face_index or 0
        if index >= len(faces):
            raise InvalidInputError(
                f"face_index {index} asked for, but the ori image has {len(faces)} face(s) (0-{len(faces) - 1})"
            )
        return [index]

    def _paste(
        self, image: np.ndarray, ori_face: Face, target: TargetFace, color_transfer: bool, look: Look
    ) -> np.ndarray:
        # The same forehead height on both faces keeps the added points in correspondence.
        forehead = min(target.forehead_height, skin_forehead_height(image, ori_face.landmarks))
        source = with_forehead(target.landmarks, forehead)
        dest = with_forehead(target_geometry(ori_face.landmarks, target.landmarks, look.geometry_strength), forehead)
        x0, y0, x1, y1 = _expand(dest, 0.02, image.shape)
        size = float(np.sqrt(max(1.0, (x1 - x0) * (y1 - y0))))
        dest, ori_landmarks, shape = dest - (x0, y0), ori_face.landmarks - (x0, y0), (y1 - y0, x1 - x0)
        background = image[y0:y1, x0:x1]
        warped = _warp_target(target.crop, source, dest, shape, size)

        alpha = feathered_mask(shape, face_outline(dest), FEATHER_FRACTION * size)
        width = FEATURE_MARGIN_FRACTION * size
        features = feature_mask(shape, dest[:68], width) | feature_mask(shape, ori_landmarks, width)
        # Near the outline (temples, forehead, jaw) either face may show hair or background: paste skin only,
        # and the features whole (mixing the target's eye with ori's where they do not coincide doubles it).
        ori_skin = skin_likelihood(background, ori_landmarks)
        skin = np.minimum(skin_likelihood(warped, dest), ori_skin)
        if look.whole_features:
            skin = np.maximum(skin, features.astype(np.float32))
        interior = alpha_ramp(shape, face_outline(dest), SKIN_ONLY_BORDER_FRACTION * size)
        alpha = alpha * cv2.GaussianBlur(interior + (1 - interior) * skin, (0, 0), FEATHER_FRACTION * size / 3)
        if color_transfer:
            warped_skin, background_skin = (
                skin_weights(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), alpha, features)
                for rgb in (warped, background)
            )
            warped = match_color(warped, background, warped_skin, background_skin, look.light_sigma_fraction * size)
        if look.match_detail:
            warped = match_detail(warped, background, alpha)
            if look.restore_detail and ori_face.box[2] - ori_face.box[0] >= RESTORE_MIN_FACE_PX:
                core = (alpha > 0.5).astype(np.float32)
                plain_skin = cv2.GaussianBlur(((1 - features) * (ori_skin > 0.5)).astype(np.float32), (0, 0), 1)
                warped = match_grain(warped, background, core, plain_skin)
                bx0, by0, bx1, by1 = ori_face.box
                enlarged = _face_size(dest) / _face_size(source)
                sigma = max(1.0, SHARPEN_SIGMA_FRACTION * enlarged)
                box = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
                warped = restore_sharpness(warped, background, alpha, box, SHARPNESS_TARGET, sigma)
        result = image.copy()
        result[y0:y1, x0:x1] = alpha_blend(background, warped, alpha)
        return result

    def _identity(self, result: np.ndarray, ori_face: Face, target: TargetFace) -> dict:
        """Cosine and dlib distance of the result's face (landmarks fitted again on the result) to the target's."""
        swapped = self.analyzer.refit(result, ori_face)
        return identity_similarity(self.analyzer.descriptor(result, swapped), target.descriptor)


def _sharpness_entry(index: int, result: float, ori: float) -> dict:
    """The metadata's sharpness of one replaced face: the result's over ori's inside ori's face box (``ratio``),
    and both variances of the Laplacian."""
    ratio = result / ori if ori > 1e-6 else 1.0
    return {"face": index, "ratio": round(ratio, 3), "result": round(result, 1), "ori": round(ori, 1)}


def _is_clean(share: float, ori_share: float) -> bool:
    """A rendering without visible artifacts: no more specks than ori's own face, within the tolerance."""
    return share <= ori_share + ARTIFACT_TOLERANCE


def _best_candidate(candidates: list[tuple[float, dict]], ori_share: float) -> int:
    """Index of the (artifact share, identity score) with the best identity cosine among those without
    visible artifacts; when every one has them, the one with the fewest."""
    clean = [i for i, (share, _) in enumerate(candidates) if _is_clean(share, ori_share)]
    if not clean:
        return min(range(len(candidates)), key=lambda i: candidates[i][0])
    return max(clean, key=lambda i: candidates[i][1].get("cosine", 0.0))


def _expand(points: np.ndarray, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box of the points grown by ``margin`` of its size, clipped to the image."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    height, width = shape[:2]
    return (
        max(0, int(np.floor(x0 - dx))),
        max(0, int(np.floor(y0 - dy))),
        min(width, int(np.ceil(x1 + dx)) + 1),
        min(height, int(np.ceil(y1 + dy)) + 1),
    )


def _warp_target(
    crop: np.ndarray, source: np.ndarray, dest: np.ndarray, shape: tuple[int, int], size: float
) -> np.ndarray:
    """The target's face warped from its ``source`` points onto the ``dest`` points, as an image of ``shape``."""
    # Shrunk by the warp, the target would alias (highlights turn into specks): resample it first.
    crop, source = _at_scale(crop, source, _face_size(dest) / _face_size(source))
    warped = warp_region(crop, source, dest, shape)
    stretch = side_stretch(source, dest)
    if max(stretch, 1 / stretch) <= MIRROR_ABOVE_STRETCH:
        return warped
    # The target is turned away from where ori's face looks: the half it hides, squeezed in its photo,
    # would be smeared over ori's wider half. That half is drawn from the mirror image of the half it shows.
    flipped, flipped_source = mirrored(crop, source)
    from_mirror = warp_region(flipped, flipped_source, dest, shape)
    weight = midline_weight(shape, dest, first_half=stretch > 1, band=MIRROR_BAND_FRACTION * size)[..., None]
    return (warped * (1 - weight) + from_mirror * weight + 0.5).astype(np.uint8)


def _face_size(landmarks: np.ndarray) -> float:
    """A face's linear size: the square root of its landmarks' hull area."""
    return float(
        np.sqrt(
            max(
                1.0,
                cv2.contourArea(
                    landmarks.astype(np.float32)[
                        cv2.convexHull(landmarks.astype(np.float32), returnPoints=False).ravel()
                    ]
                ),
            )
        )
    )


def _at_scale(image: np.ndarray, points: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``points`` on it resized by ``scale`` when that shrinks it (area averaging), else as they are."""
    if scale >= SHRINK_BELOW_SCALE:
        return image, points
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    factors = np.array([size[0] / width, size[1] / height])
    return resized, (points + 0.5) * factors - 0.5  # pixel centres map to pixel centres


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


__all__ = ["UNRESTORED", "VARIANTS", "FaceSwapper", "Look", "SwapOptions", "TargetFace"]
