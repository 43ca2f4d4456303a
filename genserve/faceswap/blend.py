"""Put a warped face onto an image without seams: one dense warp, colour and light matching, a feathered mask.

The classic recipe warps each Delaunay triangle on its own and pastes it, which leaves a line of
unfilled or doubly-filled pixels along every triangle edge, and then relies on ``seamlessClone``,
which bleeds the surrounding colours into the face. Here the whole face is warped with one
coordinate map (a piecewise affine transform evaluated per pixel, sampled once with ``cv2.remap``),
so neighbouring triangles share their edges exactly; the face's colour statistics and low-frequency
lighting are matched to the face it replaces; and an alpha mask that falls smoothly to zero at the
face outline blends it in, leaving every pixel outside that outline untouched.

At every scale (issue 13): a target shrunk by the warp is resampled to the destination size first,
so its highlights do not alias into specks; colour and light are measured on skin only (no blotches
where the two faces' features or beards do not coincide); the face's fine detail is blurred or
sharpened to the level of the face it replaces, without adding speckle or clipped pixels; the half of
a turned target that its photo hides is drawn from the mirrored half it shows; and near the outline
only skin is pasted.

Detail that a small target cannot bring (issue 33): a face enlarged several times has neither the grain
nor the crisp features of the photo it goes into, and measured 0.19 of ori's sharpness. The grain of
ori's skin is matched (:func:`match_grain`), then the face is sharpened at the scale it was enlarged by,
as little as brings ori's face box to a set share of ori's sharpness (:func:`restore_sharpness`), both
within the same speckle allowance as the detail matching and without clipping a pixel. Near the outline
eyes, brows, nostrils and lips are pasted whole rather than mixed with ori's (doubled eyes).
"""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib.tri import TrapezoidMapTriFinder, Triangulation
from scipy.spatial import Delaunay, QhullError
from skimage.transform import SimilarityTransform

from genserve.errors import InvalidInputError
from genserve.faceswap.measures import box_inside, clipped_share, outlier_share, outliers

# dlib's 68-point layout: 0-16 jaw line, 17-26 eyebrows, 27-35 nose, 36-47 eyes, 48-67 mouth.
JAW = slice(0, 17)
BROWS = slice(17, 27)
INNER = slice(17, 68)
ALIGNMENT_POINTS = [27, 28, 29, 30, 31, 35, 36, 39, 42, 45, 48, 54]  # nose, eye and mouth corners: rigid


# Each of the 68 points' mirror image across the face's midline (left jaw end <-> right jaw end, ...).
MIRROR_68 = np.array(
    [
        *range(16, -1, -1),
        *range(26, 16, -1),
        27,
        28,
        29,
        30,
        35,
        34,
        33,
        32,
        31,
        45,
        44,
        43,
        42,
        47,
        46,
        39,
        38,
        37,
        36,
        41,
        40,
        54,
        53,
        52,
        51,
        50,
        49,
        48,
        59,
        58,
        57,
        56,
        55,
        64,
        63,
        62,
        61,
        60,
        67,
        66,
        65,
    ]
)


def forehead_up(landmarks: np.ndarray) -> np.ndarray:
    """The face's upward axis, from the chin to between the eyes (its length is the face's scale)."""
    return landmarks[36:48].mean(0) - landmarks[8]


def with_forehead(landmarks: np.ndarray, height: float) -> np.ndarray:
    """The 68 landmarks plus ten forehead points: the eyebrows moved up by ``height`` of the chin-to-eyes axis.

    dlib's landmarks stop at the eyebrows, but the forehead carries much of a face's identity.
    A height of 0 adds no points.
    """
    if height <= 0:
        return landmarks
    return np.vstack([landmarks, landmarks[BROWS] + height * forehead_up(landmarks)])


# The cheeks between the eyes' lower lids, the nose and the jaw: above the mouth, so no moustache or beard.
CHEEKS = ([1, 2, 31, 40, 41], [15, 14, 35, 47, 46])


def skin_colour(lab: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Typical colour and spread of the face's skin in CIELAB (uint8 scale): the median and the MAD
    (as a standard deviation) of the cheeks, robust to a stray highlight or shadow; None when too few pixels."""
    cheeks = np.zeros(lab.shape[:2], np.uint8)
    for points in CHEEKS:
        cv2.fillConvexPoly(cheeks, face_outline(landmarks[points]), 1)
    skin = lab[cheeks > 0].astype(np.float32)
    if len(skin) < 20:
        return None
    median = np.median(skin, 0)
    return median, 1.4826 * np.median(np.abs(skin - median), 0) + 2.0


def skin_forehead_height(
    rgb: np.ndarray, landmarks: np.ndarray, heights: tuple[float, ...] = (0.2, 0.15), floor: float = 0.1
) -> float:
    """The tallest forehead band above the eyebrows that is skin rather than hair, as a fraction of the face axis.

    A height passes when the top strip of its band is mostly skin-coloured (see :func:`skin_colour`)
    and not much darker than the cheeks (hair, hats and deep shadow are). Below ``floor`` the
    forehead is always taken: it matters too much for identity to drop.
    """
    up = forehead_up(landmarks)
    x0, y0, x1, y1 = _bounds(np.vstack([landmarks, landmarks[BROWS] + max(heights) * up]), rgb.shape, margin=2)
    lab = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2LAB).astype(np.float32)
    landmarks = landmarks - (x0, y0)
    colour = skin_colour(lab, landmarks)
    if colour is None:
        return floor
    mean, std = colour
    for height in heights:
        strip = np.zeros(lab.shape[:2], np.uint8)
        lower, upper = landmarks[BROWS] + (height - 0.05) * up, landmarks[BROWS] + height * up
        cv2.fillPoly(strip, [np.round(np.vstack([lower, upper[::-1]])).astype(np.int32)], 1)
        pixels = lab[strip > 0]
        if not len(pixels):
            continue
        skin_share = (np.abs((pixels - mean) / std).max(1) < 2.5).mean()
        if skin_share >= 0.85 and pixels[:, 0].mean() >= mean[0] - 12.0:
            return height
    return floor


def skin_likelihood(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per pixel in [0, 1], how much its colour is the face's skin colour: 1 within 2.5 spreads of the
    cheeks' mean in every CIELAB channel, falling to 0 at 4 (hair, background, hats)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    colour = skin_colour(lab, landmarks)
    if colour is None:
        return np.ones(rgb.shape[:2], np.float32)
    mean, std = colour
    distance = np.abs((lab - mean) / std).max(-1)
    return np.clip((4.0 - distance) / 1.5, 0.0, 1.0).astype(np.float32)


def _bounds(points: np.ndarray, shape: tuple[int, ...], margin: int) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = np.floor(points.min(0)).astype(int) - margin, np.ceil(points.max(0)).astype(int) + margin + 1
    return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)


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


def mirrored(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image flipped left-right, and its landmarks (68, or 68 + ten forehead points) renumbered so
    that each point keeps its meaning: the flipped face's right eye corner is still point 45."""
    order = np.concatenate([MIRROR_68, 68 + MIRROR_68[17:27] - 17])[: len(landmarks)]
    flipped = landmarks.copy()
    flipped[:, 0] = image.shape[1] - 1 - flipped[:, 0]
    return cv2.flip(image, 1), flipped[order]


def side_stretch(source: np.ndarray, dest: np.ndarray) -> float:
    """How much more the warp widens the face's first half (jaw points 0-7, the image's left on a frontal
    face) than its second: the ratio of the two halves' width ratios, dest over source. Far from 1 when
    the source face is turned away and its far half, squeezed in the photo, would be stretched."""

    def halves(points: np.ndarray) -> tuple[float, float]:
        nose = points[30]
        return float(np.linalg.norm(points[2] - nose)) + 1e-6, float(np.linalg.norm(points[14] - nose)) + 1e-6

    (source_first, source_second), (dest_first, dest_second) = halves(source), halves(dest)
    return (dest_first / source_first) / (dest_second / source_second)


def midline_weight(shape: tuple[int, int], landmarks: np.ndarray, first_half: bool, band: float) -> np.ndarray:
    """Weight in [0, 1]: 1 over one half of the face (the first: jaw points 0-7), 0 over the other,
    a smooth ramp ``band`` pixels wide across the midline (nose bridge to chin)."""
    top, bottom = landmarks[27], landmarks[8]
    normal = np.array([bottom[1] - top[1], top[0] - bottom[0]], np.float64)
    normal /= np.linalg.norm(normal) + 1e-9
    if np.dot(landmarks[2] - top, normal) < 0:
        normal = -normal  # positive towards the first half
    if not first_half:
        normal = -normal
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    distance = (xs - top[0]) * normal[0] + (ys - top[1]) * normal[1]
    ramp = np.clip(distance / max(band, 1.0) + 0.5, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """Convex hull of the landmarks as int32 points (jaw line and eyebrows for dlib's 68 points)."""
    return cv2.convexHull(np.round(landmarks).astype(np.int32)).reshape(-1, 2)


def warp_region(
    source: np.ndarray, source_points: np.ndarray, dest_points: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """``source`` warped so that ``source_points`` land on ``dest_points``, as an image of ``size`` (height, width).

    A piecewise affine map over the Delaunay triangles of the destination points: each destination
    pixel is found in its triangle (matplotlib's trapezoid-map search, in C++), mapped by that
    triangle's affine transform, and the source is sampled once with ``cv2.remap``: no gaps, no
    overlaps. Pixels outside the triangles take the nearest triangle's map; the blending mask is zero
    there anyway.
    """
    try:
        triangulation = Delaunay(dest_points)
    except QhullError:
        raise InvalidInputError("the face landmarks are degenerate (face too small or seen edge-on)") from None
    simplices = triangulation.simplices
    linear, offset = _triangle_affines(dest_points[simplices], source_points[simplices])

    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    try:
        finder = TrapezoidMapTriFinder(Triangulation(dest_points[:, 0], dest_points[:, 1], simplices))
        labels = finder(xs.ravel(), ys.ravel())
    except (RuntimeError, ValueError):  # coincident landmarks (tiny faces): qhull's slower point location copes
        labels = triangulation.find_simplex(np.column_stack([xs.ravel(), ys.ravel()]))
    labels = labels.reshape(height, width).astype(np.int32)
    outside = labels < 0
    if outside.all():
        raise InvalidInputError("the face landmarks are degenerate (face too small or seen edge-on)")
    if outside.any():  # each outside pixel takes the label of the nearest inside pixel
        _, nearest = cv2.distanceTransformWithLabels(
            outside.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )
        labels[outside] = labels[~outside][nearest[outside] - 1]
    a, b = linear[labels], offset[labels]
    map_x = (a[..., 0, 0] * xs + a[..., 0, 1] * ys + b[..., 0]).astype(np.float32)
    map_y = (a[..., 1, 0] * xs + a[..., 1, 1] * ys + b[..., 1]).astype(np.float32)
    return cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _triangle_affines(dest: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle (corners ``(T, 3, 2)``), the affine map dest -> source as ``x -> linear @ x + offset``.

    Written out for 2x2 matrices: scipy's ``Delaunay.transform`` takes hundreds of milliseconds here.
    A degenerate triangle gets a zero map; no pixel centre falls inside it.
    """
    dest_edges = (dest[:, 1:] - dest[:, :1]).transpose(0, 2, 1)  # (T, 2, 2): columns d1-d0, d2-d0
    source_edges = (source[:, 1:] - source[:, :1]).transpose(0, 2, 1)
    (a, b), (c, d) = dest_edges[:, 0].T, dest_edges[:, 1].T
    determinant = a * d - b * c
    safe = np.where(np.abs(determinant) > 1e-9, determinant, np.inf)
    inverse = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], 1) / safe[:, None, None]
    linear = source_edges @ inverse
    offset = source[:, 0] - np.einsum("tij,tj->ti", linear, dest[:, 0])
    return linear, offset


def feathered_mask(shape: tuple[int, int], outline: np.ndarray, feather_px: float) -> np.ndarray:
    """Alpha in [0, 1]: 0 on and outside the outline, rising smoothly to 1 over ``feather_px`` inside it."""
    ramp = alpha_ramp(shape, outline, feather_px)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible edge in the ramp


def alpha_ramp(shape: tuple[int, int], outline: np.ndarray, width_px: float) -> np.ndarray:
    """0 on and outside the outline, rising linearly to 1 at ``width_px`` inside it (float32)."""
    inside = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(inside, outline, 1)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    return np.clip(distance / max(width_px, 1.0), 0.0, 1.0).astype(np.float32)


# The parts of a face that are not skin, as landmark polygons of dlib's 68 points: eyes, brows, nostrils, lips.
FEATURES = (range(36, 42), range(42, 48), range(17, 22), range(22, 27), range(31, 36), range(48, 60))


def feature_mask(shape: tuple[int, int], landmarks: np.ndarray, width: float) -> np.ndarray:
    """1 on the eyes, brows, nostrils and lips of a face (each grown by ``width`` pixels), 0 elsewhere."""
    mask = np.zeros(shape, np.uint8)
    thickness = max(1, int(round(2 * width)))
    for points in FEATURES:
        polygon = np.round(landmarks[list(points)]).astype(np.int32)
        cv2.fillConvexPoly(mask, cv2.convexHull(polygon), 1)
        cv2.polylines(mask, [polygon], True, 1, thickness)
    return mask


def skin_weights(lightness: np.ndarray, weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``weights`` kept only on skin: off the features and off what is far darker or brighter than the face's skin.

    Moustaches, beards, hair over the forehead and specular highlights are not in the landmarks'
    features; a robust spread of the lightness (median and MAD over the weighted pixels) leaves them out.
    """
    candidates = (weights > 0.5) & (features == 0)
    values = lightness[candidates]
    if values.size < 20:
        return weights * (features == 0)
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) + 1.0
    return weights * (features == 0) * (np.abs(lightness - median) < 2.5 * spread)


def weighted_blur(channel: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Normalized convolution: a Gaussian blur that only sees pixels with weight, each in proportion to it."""
    blurred = cv2.GaussianBlur(channel * weights, (0, 0), sigma)
    return blurred / (cv2.GaussianBlur(weights, (0, 0), sigma) + 1e-6)


def match_color(
    face: np.ndarray, reference: np.ndarray, face_skin: np.ndarray, reference_skin: np.ndarray, light_sigma: float
) -> np.ndarray:
    """``face`` recoloured to match ``reference``; both RGB uint8 of one shape, returns RGB uint8.

    Both are measured on their own skin (``*_skin`` weights, see :func:`skin_weights`): features,
    beards and highlights would bias a face's tone and put blotches where the two faces' features do
    not coincide. Two steps in CIELAB: the mean and spread of each channel are transferred (skin tone,
    contrast; the spread within bounds, so that highlights are not stretched into clipping), then the
    low-frequency part of the lightness (how the light falls across the face) is taken from the
    reference, while the face keeps its own detail: eyes, brows, mouth, skin texture.
    """
    face_lab = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    ref_lab = cv2.cvtColor(reference.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    face_mean, face_std = _weighted_stats(face_lab, face_skin)
    ref_mean, ref_std = _weighted_stats(ref_lab, reference_skin)
    gain = np.clip(ref_std / face_std, 1 / SPREAD_GAIN_LIMIT, SPREAD_GAIN_LIMIT)
    matched = (face_lab - face_mean) * gain + ref_mean

    if light_sigma > 0:
        light = weighted_blur(ref_lab[..., 0], reference_skin, light_sigma) - weighted_blur(
            matched[..., 0], face_skin, light_sigma
        )
        matched[..., 0] += light

    matched[..., 0] = soft_clip(matched[..., 0], 0.0, 100.0, knee=8.0)
    rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


# How far the colour transfer may scale a channel's spread (target's contrast vs ori's), either way.
SPREAD_GAIN_LIMIT = 1.5


def _weighted_stats(lab: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = weights[..., None]
    total = float(weights.sum()) + 1e-6
    mean = (lab * w).sum((0, 1)) / total
    std = np.sqrt((((lab - mean) ** 2) * w).sum((0, 1)) / total) + 1e-3
    return mean, std


def soft_clip(values: np.ndarray, low: float, high: float, knee: float) -> np.ndarray:
    """``values`` squeezed into [low, high] smoothly: unchanged inside the knees, rolled off towards the ends
    (a hard clip flattens highlights into white patches)."""
    top, bottom = high - knee, low + knee
    out = values.copy()
    above, below = values > top, values < bottom
    out[above] = top + knee * np.tanh((values[above] - top) / knee)
    out[below] = bottom - knee * np.tanh((bottom - values[below]) / knee)
    return out


def detail_level(grey: np.ndarray, weights: np.ndarray) -> float:
    """Mean absolute fine detail (grey minus its 1-pixel Gaussian blur) over ``weights``: how sharp an area is."""
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.0))
    return float((detail * weights).sum() / (weights.sum() + 1e-6))


def match_detail(face: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``face`` blurred or sharpened so that its fine detail matches ``reference``'s over ``weights``.

    A face pasted at a smaller scale than it was photographed at is sharper than the photo around it,
    and speckled where it had highlights or crisp features that ori's optics or compression would have
    softened; one enlarged from a small photo is blurrier. Blurring takes the lightest Gaussian that
    brings both the detail level and the share of speckle (pixels far from their 5x5 median) down to
    ori's; sharpening is the unsharp mask whose detail level comes closest to ori's without adding
    speckle or clipped (flat white or black) pixels.
    """
    core = weights > 0.5
    if not core.any():
        return face
    reference_grey = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY).astype(np.float32)
    wanted = detail_level(reference_grey, weights)
    speckle = min(outlier_share(reference, core) + SPECKLE_MARGIN, MAX_SPECKLE)
    clipped = max(clipped_share(reference, core), clipped_share(face, core)) + SPECKLE_MARGIN

    def fits(candidate: np.ndarray) -> tuple[float, bool]:
        level = detail_level(cv2.cvtColor(candidate, cv2.COLOR_RGB2GRAY).astype(np.float32), weights)
        return level, outlier_share(candidate, core) <= speckle and clipped_share(candidate, core) <= clipped

    have, clean = fits(face)
    if have > wanted * DETAIL_TOLERANCE or not clean:
        for sigma in BLUR_SIGMAS:
            blurred = cv2.GaussianBlur(face, (0, 0), sigma)
            level, clean = fits(blurred)
            if level <= wanted * DETAIL_TOLERANCE and clean:
                break
        return blurred
    if have < wanted / DETAIL_TOLERANCE and have > 0:
        smooth = cv2.GaussianBlur(face.astype(np.float32), (0, 0), 1.0)
        best, best_gap = face, wanted - have
        for gain in SHARPEN_GAINS:
            sharpened = np.clip(face + gain * (face - smooth) + 0.5, 0, 255).astype(np.uint8)
            level, clean = fits(sharpened)
            if clean and abs(wanted - level) < best_gap:
                best, best_gap = sharpened, abs(wanted - level)
        return best
    return face


# Detail levels within this factor of ori's are left alone; speckle may exceed ori's share by this much,
# and never pass MAX_SPECKLE: a crisp, noisy ori (an LFW-framed crop) must not license visible specks in
# the face pasted into it (the shares measured: docs/contest.md, "Contest-shaped deepfakes").
DETAIL_TOLERANCE = 1.1
SPECKLE_MARGIN = 0.001
MAX_SPECKLE = 0.004
BLUR_SIGMAS = (0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5)
SHARPEN_GAINS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def alpha_blend(background: np.ndarray, foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``foreground`` over ``background`` by ``alpha``; every pixel where alpha is 0 is the background's, bit for bit.

    Along the feathered edge two photos mix: where ori has a hard edge just outside the face (a
    sideburn, a shadow line), the mixed pixels beside it can stand out of their neighbourhood. Pixels
    of the edge band that became outliers (over 40 grey levels from their 5x5 median) while ori's were
    not take their 5x5 median instead.
    """
    a = alpha[..., None]
    blended = foreground.astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    band = (alpha > 0) & (alpha < 1)
    if band.any():
        new_outliers = band & outliers(out) & ~outliers(background)
        out[new_outliers] = cv2.medianBlur(out, 5)[new_outliers]
    return np.where(a > 0, out, background)


# --- detail a small target cannot bring (issue 33) -----------------------------------------------------

# The finest band of detail: grey minus its Gaussian blur of this sigma (grain, pores, compression noise).
GRAIN_SIGMA = 0.7
GRAIN_SEED = 0  # the grain is the same for the same input: results are reproducible
# Sharpening adds at most this many grey levels to a pixel (a soft limit), so that halos stay faint.
SHARPEN_OVERSHOOT = 20.0
SHARPEN_MAX_GAIN = 3.0
SHARPEN_STEPS = 6  # bisection steps of the gain
GRAIN_TRIES = 4  # grain and sharpening are halved until they fit the speckle allowance, at most this often


def fine_band(grey: np.ndarray, sigma: float = GRAIN_SIGMA) -> np.ndarray:
    return grey - cv2.GaussianBlur(grey, (0, 0), sigma)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _rms(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sqrt((values * values * weights).sum() / (weights.sum() + 1e-6)))


def grey_limits(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, how far a grey change may go down and up without clipping a pixel that was not clipped:
    no channel pushed to 250 or more, and no pixel's channels all down to 5 or less (see :func:`add_grey`)."""
    top = face.max(-1).astype(np.float32)
    return -np.clip(top - 6.0, 0, None), np.clip(249.0 - top, 0, None)


def add_grey(face: np.ndarray, delta: np.ndarray, limits: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``delta`` (grey levels, per pixel) added to every channel of ``face``, within ``limits`` (default:
    :func:`grey_limits`, which clip no pixel that was not clipped)."""
    low, high = grey_limits(face) if limits is None else limits
    delta = np.clip(delta, low, high)
    return np.clip(face.astype(np.float32) + delta[..., None] + 0.5, 0, 255).astype(np.uint8)


def speckle_allowance(reference: np.ndarray, face: np.ndarray, core: np.ndarray) -> float:
    """The share of outliers the detail steps may leave in ``core``: ori's own plus a margin, at most
    MAX_SPECKLE (see :func:`match_detail`), or what the face already has."""
    return max(min(outlier_share(reference, core) + SPECKLE_MARGIN, MAX_SPECKLE), outlier_share(face, core))


def match_grain(face: np.ndarray, reference: np.ndarray, core: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """``face`` with the grain it lacks to match ``reference``'s skin: both RGB uint8 of one shape.

    A face enlarged from a small photo is smooth where the photo around it has grain (sensor noise,
    pores, compression): it looks pasted, and it is softer than the face it replaces. The finest band's
    level (root mean square over ``core`` x ``skin``: ori's skin, off the features of both faces) is
    measured on both, and the part the face lacks is added as grain of that band, the same on every
    channel. The grain is synthetic: ori's own texture carried over brought ori's wrinkles and creases
    with it and cost identity (docs/contest.md, "Detail"). Halved while it adds speckle beyond
    :func:`speckle_allowance`.
    """
    weights = core * skin
    if weights.sum() < 50:
        return face
    wanted = _rms(fine_band(_grey(reference)), weights)
    have = _rms(fine_band(_grey(face)), weights)
    if have >= wanted:
        return face
    noise = np.random.default_rng(GRAIN_SEED).standard_normal(face.shape[:2]).astype(np.float32)
    grain = cv2.GaussianBlur(fine_band(noise), (0, 0), 0.5)
    grain *= np.sqrt(wanted * wanted - have * have) / (_rms(grain, weights) + 1e-6) * core
    inside = core > 0.5
    allowed = speckle_allowance(reference, face, inside)
    own = outliers(face)
    for _ in range(GRAIN_TRIES):
        grained = _without_new_outliers(add_grey(face, grain), own)
        if outlier_share(grained, inside) <= allowed:
            return grained
        grain = grain * 0.5
    return face


def restore_sharpness(
    face: np.ndarray,
    reference: np.ndarray,
    alpha: np.ndarray,
    box: tuple[int, int, int, int],
    wanted_ratio: float,
    sigma: float,
) -> np.ndarray:
    """``face`` sharpened (an unsharp mask of ``sigma``) as little as brings the blend of the face over
    ``reference`` by ``alpha`` to ``wanted_ratio`` of ``reference``'s sharpness inside ``box`` (the variance
    of the Laplacian: :func:`genserve.faceswap.measures.sharpness`).

    ``sigma`` is the scale the face was enlarged at (its detail there is what the enlargement smeared).
    The gain is found by bisection on the grey image, at most SHARPEN_MAX_GAIN, each pixel's change
    softly limited to SHARPEN_OVERSHOOT grey levels (faint halos), no pixel clipped (:func:`add_grey`);
    pixels the sharpening turned into outliers take their 5x5 median, and the gain is halved while the
    face has more speckle than :func:`speckle_allowance`. A face already sharp enough is returned as it is.
    """
    x0, y0, x1, y1 = box_inside(box, face.shape)
    core = alpha > 0.5
    if x1 - x0 < 3 or y1 - y0 < 3 or not core.any():
        return face
    area = (slice(y0, y1), slice(x0, x1))
    grey = _grey(face)
    ref_grey, weight, own_grey = _grey(reference)[area], alpha[area], grey[area]
    wanted = wanted_ratio * float(cv2.Laplacian(ref_grey, cv2.CV_32F).var())
    limits = grey_limits(face)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), sigma)

    def change(gain: float) -> np.ndarray:
        return np.clip(SHARPEN_OVERSHOOT * np.tanh(gain * detail / SHARPEN_OVERSHOOT), *limits)

    def blend_sharpness(gain: float) -> float:
        blended = (own_grey + change(gain)[area]) * weight + ref_grey * (1.0 - weight)
        return float(cv2.Laplacian(blended, cv2.CV_32F).var())

    if blend_sharpness(0.0) >= wanted:
        return face
    gain = SHARPEN_MAX_GAIN
    if blend_sharpness(gain) >= wanted:
        low, high = 0.0, SHARPEN_MAX_GAIN
        for _ in range(SHARPEN_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if blend_sharpness(middle) < wanted else (low, middle)
        gain = high
    allowed, own = speckle_allowance(reference, face, core), outliers(face)
    for _ in range(GRAIN_TRIES):
        sharpened = _without_new_outliers(add_grey(face, change(gain), limits), own)
        if outlier_share(sharpened, core) <= allowed:
            return sharpened
        gain /= 2
    return face


def _without_new_outliers(image: np.ndarray, before: np.ndarray) -> np.ndarray:
    """``image`` with the pixels that became outliers (``before``: the outliers it had) set to their 5x5 median."""
    new = outliers(image) & ~before
    if new.any():
        image = image.copy()
        image[new] = cv2.medianBlur(image, 5)[new]
    return image
