"""Put a warped face onto an image without seams: one dense warp, colour and light matching, a feathered mask.

The classic recipe warps each Delaunay triangle on its own and pastes it, which leaves a line of
unfilled or doubly-filled pixels along every triangle edge, and then relies on ``seamlessClone``,
which bleeds the surrounding colours into the face. Here the whole face is warped with one
coordinate map (a piecewise affine transform evaluated per pixel, sampled once with ``cv2.remap``),
so neighbouring triangles share their edges exactly; the face's colour statistics and low-frequency
lighting are matched to the face it replaces; and an alpha mask that falls smoothly to zero at the
face outline blends it in, leaving every pixel outside that outline untouched.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay, QhullError
from skimage.transform import SimilarityTransform

from genserve.errors import InvalidInputError


# dlib's 68-point layout: 0-16 jaw line, 17-26 eyebrows, 27-35 nose, 36-47 eyes, 48-67 mouth.
JAW = slice(0, 17)
BROWS = slice(17, 27)
INNER = slice(17, 68)
ALIGNMENT_POINTS = [27, 28, 29, 30, 31, 35, 36, 39, 42, 45, 48, 54]  # nose, eye and mouth corners: rigid


def forehead_up(landmarks: np.ndarray) -> np.ndarray:
    """The face's upward axis, from the chin to between the eyes (its length is the face's scale)."""
    return landmarks[36:48].mean(0) - landmarks[8]


def with_forehead(landmarks: np.ndarray, height: float) -> np.ndarray:
    """The 68 landmarks plus ten forehead points: the eyebrows moved up by ``height`` of the chin-to-eyes axis.

    dlib's landmarks stop at the eyebrows, but the forehead carries much of a face's identity.
    """
    return np.vstack([landmarks, landmarks[BROWS] + height * forehead_up(landmarks)])


def skin_forehead_height(
    rgb: np.ndarray, landmarks: np.ndarray, heights: tuple[float, ...] = (0.2, 0.15), floor: float = 0.1
) -> float:
    """The tallest forehead band above the eyebrows that is skin rather than hair, as a fraction of the face axis.

    Skin colour is measured on the cheeks and nose. A height passes when the top strip of its band
    is mostly skin-coloured and not much darker than the cheeks (hair, hats and deep shadow are).
    Below ``floor`` the forehead is always taken: it matters too much for identity to drop.
    """
    cheeks = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillConvexPoly(cheeks, face_outline(landmarks[[1, 2, 3, 31, 33, 35, 13, 14, 15, 29]]), 1)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    skin = lab[cheeks > 0]
    if len(skin) < 20:
        return floor
    mean, std = skin.mean(0), skin.std(0) + 2.0
    up = forehead_up(landmarks)
    for height in heights:
        strip = np.zeros(rgb.shape[:2], np.uint8)
        lower, upper = landmarks[BROWS] + (height - 0.05) * up, landmarks[BROWS] + height * up
        cv2.fillPoly(strip, [np.round(np.vstack([lower, upper[::-1]])).astype(np.int32)], 1)
        pixels = lab[strip > 0]
        if not len(pixels):
            continue
        skin_share = (np.abs((pixels - mean) / std).max(1) < 2.5).mean()
        if skin_share >= 0.85 and pixels[:, 0].mean() >= mean[0] - 12.0:
            return height
    return floor


def target_geometry(ori: np.ndarray, target: np.ndarray, strength: float) -> np.ndarray:
    """Ori's landmarks with the inner features (brows, eyes, nose, mouth) moved towards the target's.

    The target's landmarks are aligned to ori's by a similarity transform (position, size, roll), and the
    inner points move ``strength`` of the way to them: the swapped face then keeps the target's
    proportions, which identity depends on, while the jaw line (the outline in ori's scene) stays put.
    The strength is lowered, down to 0, while it folds the warp over more than the landmarks alone
    do (a face turned away from the camera cannot take a frontal face's layout).
    """
    transform = SimilarityTransform.from_estimate(target[ALIGNMENT_POINTS], ori[ALIGNMENT_POINTS])
    if not transform:
        return ori
    aligned = transform(target)
    tolerance = _folded_share(ori, target) + 0.01  # dlib's own landmark noise folds a little already
    for step in np.linspace(strength, 0.0, 5):
        moved = ori.copy()
        moved[INNER] = (1.0 - step) * ori[INNER] + step * aligned[INNER]
        if _folded_share(moved, target) <= tolerance:
            return moved
    return ori


def _folded_share(dest: np.ndarray, source: np.ndarray) -> float:
    """Share of the destination's area in triangles that come out mirrored in the source (folds of the warp)."""
    triangles = Delaunay(dest).simplices

    def signed_areas(points: np.ndarray) -> np.ndarray:
        a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    dest_areas, source_areas = signed_areas(dest), signed_areas(source)
    folded = np.abs(dest_areas)[dest_areas * source_areas < 0].sum()
    return float(folded / (np.abs(dest_areas).sum() + 1e-9))


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """Convex hull of the landmarks as int32 points (jaw line and eyebrows for dlib's 68 points)."""
    return cv2.convexHull(np.round(landmarks).astype(np.int32)).reshape(-1, 2)


def warp_region(
    source: np.ndarray, source_points: np.ndarray, dest_points: np.ndarray, region: tuple[int, int, int, int]
) -> np.ndarray:
    """``source`` warped so that ``source_points`` land on ``dest_points``, for the ``region`` (x0, y0, x1, y1).

    A piecewise affine map over the Delaunay triangles of the destination points, evaluated per
    destination pixel (its barycentric coordinates in its triangle, applied to the same triangle in
    the source), then sampled once with ``cv2.remap``: no gaps, no overlaps. Pixels outside the
    triangles keep the nearest triangle's affine map; the blending mask is zero there anyway.
    """
    try:
        triangulation = Delaunay(dest_points)
    except QhullError:
        raise InvalidInputError("the face landmarks are degenerate (face too small or seen edge-on)") from None
    x0, y0, x1, y1 = region
    ys, xs = np.mgrid[y0:y1, x0:x1]
    pixels = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    simplex = triangulation.find_simplex(pixels)
    outside = simplex < 0
    if outside.any():  # nearest triangle by centroid, so the map stays continuous around the hull
        centroids = dest_points[triangulation.simplices].mean(1)
        nearest = np.argmin(((pixels[outside, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        simplex[outside] = nearest
    affine = triangulation.transform[simplex]  # (N, 3, 2): inverse of the triangle's basis, then its origin
    weights = np.einsum("nij,nj->ni", affine[:, :2], pixels - affine[:, 2])
    barycentric = np.column_stack([weights, 1.0 - weights.sum(1)])
    corners = source_points[triangulation.simplices[simplex]]  # (N, 3, 2)
    mapped = np.einsum("ni,nij->nj", barycentric, corners).astype(np.float32)
    map_x = mapped[:, 0].reshape(y1 - y0, x1 - x0)
    map_y = mapped[:, 1].reshape(y1 - y0, x1 - x0)
    return cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def feathered_mask(shape: tuple[int, int], outline: np.ndarray, feather_px: float) -> np.ndarray:
    """Alpha in [0, 1]: 0 on and outside the outline, rising smoothly to 1 over ``feather_px`` inside it."""
    inside = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(inside, outline, 1)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    ramp = np.clip(distance / max(feather_px, 1.0), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep: no visible edge in the ramp


def match_color(face: np.ndarray, reference: np.ndarray, weights: np.ndarray, light_sigma: float) -> np.ndarray:
    """``face`` recoloured to match ``reference`` where ``weights`` > 0; both RGB uint8, returns RGB uint8.

    Two steps in CIELAB: the mean and spread of each channel are transferred (skin tone, contrast),
    then the low-frequency part of the lightness (how the light falls across the face) is taken from
    the reference, while the face keeps its own detail: eyes, brows, mouth, skin texture.
    """
    face_lab = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    ref_lab = cv2.cvtColor(reference.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    w = weights[..., None]
    total = float(weights.sum()) + 1e-6
    face_mean = (face_lab * w).sum((0, 1)) / total
    ref_mean = (ref_lab * w).sum((0, 1)) / total
    face_std = np.sqrt((((face_lab - face_mean) ** 2) * w).sum((0, 1)) / total) + 1e-3
    ref_std = np.sqrt((((ref_lab - ref_mean) ** 2) * w).sum((0, 1)) / total) + 1e-3
    matched = (face_lab - face_mean) * (ref_std / face_std) + ref_mean

    if light_sigma > 0:
        # Weighted (normalized) blur: the light estimate only sees pixels inside the face.
        def low_pass(channel: np.ndarray) -> np.ndarray:
            blurred = cv2.GaussianBlur(channel * weights, (0, 0), light_sigma)
            return blurred / (cv2.GaussianBlur(weights, (0, 0), light_sigma) + 1e-6)

        matched[..., 0] += low_pass(ref_lab[..., 0]) - low_pass(matched[..., 0])

    matched[..., 0] = np.clip(matched[..., 0], 0.0, 100.0)
    rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def alpha_blend(background: np.ndarray, foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    blended = foreground.astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    # Where alpha is 0 the background is kept bit for bit.
    return np.where(a > 0, out, background)
