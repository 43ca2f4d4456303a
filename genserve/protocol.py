"""The wire contract of every served task, in one place.

One :class:`~genserve.schema.Contract` per served model says what travels: the request's fields and the
response's outputs (:mod:`genserve.schema` says what those are made of and how they are checked and
encoded). Everything that speaks to the server reads it: the client packs requests and unpacks responses
with it, the command line builds its options from it, ``genserve build-repo`` writes the pipeline
models' ``config.pbtxt`` from it, the stack's own models declare their tensors from it when Triton loads
them (auto-complete), the served models decode and check requests with it, and the in-process request
classes (``SwapOptions``, ``GenerationRequest``) are held to its fields by a test. Changing a parameter
is one edit here (and, for those classes, one there).

numpy only: imported by the client, by the Triton models and by the configuration writer alike.
"""

from __future__ import annotations

from dataclasses import replace

from genserve import config
from genserve.metadata import GenerationMetadata, SwapMetadata
from genserve.schema import BYTES, Contract, Field, Output

# How many rendering variants the face swap has to choose among (genserve.faceswap.swapper.VARIANTS).
MAX_SWAP_CANDIDATES = 6

FACE_SWAP = Contract(
    model="face_swap",
    summary="deepfake: the face of TARGET_IMAGE put into ORI_IMAGE, keeping ORI_IMAGE's scene",
    fields=(
        Field(
            "ori_image",
            "image",
            f"the image whose scene is kept ({config.image_formats_text()} bytes)",
            tensor="ORI_IMAGE",
            required=True,
            max_pixels=config.MAX_FACE_SWAP_PIXELS,
        ),
        Field(
            "target_image",
            "image",
            "the image whose face is pasted",
            tensor="TARGET_IMAGE",
            required=True,
            max_pixels=config.MAX_FACE_SWAP_PIXELS,
        ),
        Field(
            "result_image",
            "image",
            "score this image, a result of putting TARGET_IMAGE's face into ORI_IMAGE, instead of swapping: "
            "IMAGE is it as sent, METADATA its identity, sharpness and artifacts, measured as a swap measures "
            "the image it returns",
            tensor="RESULT_IMAGE",
            max_pixels=config.MAX_FACE_SWAP_PIXELS,
        ),
        Field("face_index", "int", "which face of ori to replace, largest first (default: the largest)", minimum=0),
        Field("all_faces", "bool", "replace every face of ori", default=False),
        Field(
            "output_format", "text", "encoding of the result", default="jpeg", choices=("jpeg", "jpg", "png", "webp")
        ),
        Field("jpeg_quality", "int", "JPEG/WebP quality of the result", default=95, minimum=1, maximum=100),
        Field("color_transfer", "bool", "match the target face's colour and light to ori's face", default=True),
        Field(
            "compute_identity", "bool", "report the identity score of the result (one face descriptor)", default=True
        ),
        Field(
            "ori_identity", "bool", "also score ori's own face against the target (one more descriptor)", default=False
        ),
        Field(
            "candidates",
            "int",
            "render this many variants and keep the one most like the target among those "
            "without visible artifacts; every candidate's score is reported",
            default=1,
            minimum=1,
            maximum=MAX_SWAP_CANDIDATES,
        ),
    ),
    outputs=(
        Output("IMAGE", "image", BYTES, (1,), "the encoded result"),
        Output(
            "METADATA",
            "metadata",
            BYTES,
            (1,),
            "JSON: faces found, replaced, identity score, timings",
            encoding="json",
            schema=SwapMetadata,
        ),
    ),
    max_image_bytes=2 * config.MAX_IMAGE_BYTES,  # a result to score travels beside ori and target
)

OCR = Contract(
    model="ocr",
    summary="PP-OCRv4: the lines of text in an image, top to bottom then left to right",
    fields=(
        Field("image", "image", f"encoded image bytes ({config.image_formats_text()})", tensor="IMAGE", required=True),
    ),
    outputs=(
        Output("BOXES", "boxes", "float32", (-1, 4, 2), "each line's corners, clockwise from top-left, in pixels"),
        Output("TEXTS", "texts", BYTES, (-1,), "each line's text", encoding="utf-8"),
        Output("SCORES", "scores", "float64", (-1,), "each line's recognition confidence in [0, 1]"),
    ),
)

MAX_STEPS = 1000


def _generation_fields(prompt_help: str, image: bool, extra: tuple[Field, ...] = ()) -> tuple[Field, ...]:
    fields = [Field("prompt", "text", prompt_help, tensor="PROMPT", required=True)]
    if image:
        fields.append(
            Field(
                "image",
                "image",
                f"the image to edit ({config.image_formats_text()} bytes); one larger than the "
                "pipeline's working size is resized to it, aspect kept",
                tensor="IMAGE",
                required=True,
            )
        )
        extra = (Field("keep_size", "bool", "return the result at the input image's exact size", default=False), *extra)
    return (
        *fields,
        Field(
            "negative_prompt",
            "text",
            "what to steer away from (SD; FLUX with true_cfg_scale > 1)",
            tensor="NEGATIVE_PROMPT",
        ),
        Field(
            "steps", "int", "denoising steps (default: the pipeline's)", tensor="STEPS", minimum=1, maximum=MAX_STEPS
        ),
        Field("guidance", "float", "guidance scale (default: the pipeline's)", tensor="GUIDANCE", minimum=0),
        Field(
            "seed",
            "int",
            "random seed (default: drawn by the server and reported)",
            tensor="SEED",
            minimum=0,
            maximum=2**63 - 1,
            dtype="int64",
        ),
        Field("width", "int", "image width in pixels (edits: the input's, resized)", tensor="WIDTH", minimum=1),
        Field("height", "int", "image height in pixels", tensor="HEIGHT", minimum=1),
        Field("num_images", "int", "images per request", tensor="NUM_IMAGES", default=1, minimum=1),
        Field(
            "strength",
            "float",
            "img2img: how far from the input image to go",
            minimum=0,
            maximum=1,
            exclusive_minimum=True,
        ),
        Field("true_cfg_scale", "float", "FLUX: classifier-free guidance with the negative prompt when > 1", minimum=0),
        Field("max_sequence_length", "int", "text tokens of the long text encoder (T5, GLM)", minimum=1, maximum=4096),
        *extra,
    )


_GENERATION_OUTPUTS = (
    Output("IMAGES", "images", BYTES, (-1,), "the images, PNG"),
    Output(
        "METADATA",
        "metadata",
        BYTES,
        (1,),
        "JSON: seed, steps, sizes, warnings, timings",
        encoding="json",
        schema=GenerationMetadata,
    ),
)

# The streaming variant of a pipeline model (``<model>_stream``) adds one output: a progress report per
# denoising step, sent before the result.
STREAM_SUFFIX = "_stream"
PROGRESS = Output(
    "PROGRESS",
    "progress",
    BYTES,
    (1,),
    "JSON after a denoising step (the first, then as often as the model's progress interval allows): step, steps, "
    "elapsed_ms",
    encoding="json",
)


def streaming(contract: Contract) -> Contract:
    """The streaming variant of a pipeline model's contract."""
    return replace(
        contract,
        model=contract.model + STREAM_SUFFIX,
        summary=contract.summary + " (streamed: progress, then the result)",
        outputs=(*contract.outputs, PROGRESS),
        streaming=True,
    )


TEXT_TO_IMAGE = Contract(
    model="text_to_image",
    summary="t2i: an image from a prompt",
    fields=_generation_fields("what to draw", image=False),
    outputs=_GENERATION_OUTPUTS,
)
EDIT_IMAGE = Contract(
    model="edit_image",
    summary="tie: an image edited as the prompt says",
    fields=_generation_fields("the edit instruction", image=True),
    outputs=_GENERATION_OUTPUTS,
)
EDIT_TEXT = Contract(
    model="edit_text",
    summary="vttie: the text written in an image changed, the instruction quoting old and new text",
    fields=_generation_fields(
        'the instruction, quoting the new text: change "OPEN" to "CLOSED"',
        image=True,
        extra=(
            Field(
                "candidates",
                "int",
                "edits to make (one denoising batch); the one whose OCR reading is closest to the "
                "new text is returned, every candidate's scores reported",
                default=1,
                minimum=1,
                maximum=8,
            ),
        ),
    ),
    outputs=_GENERATION_OUTPUTS,
)

# The contest's task types and the contract serving each.
TASKS: dict[str, Contract] = {"t2i": TEXT_TO_IMAGE, "tie": EDIT_IMAGE, "vttie": EDIT_TEXT, "deepfake": FACE_SWAP}
TASK_TYPES = tuple(TASKS)
DIFFUSION_TASKS = ("t2i", "tie", "vttie")
STREAMING_TASKS: dict[str, Contract] = {task: streaming(TASKS[task]) for task in DIFFUSION_TASKS}
CONTRACTS: dict[str, Contract] = {
    c.model: c for c in (FACE_SWAP, OCR, TEXT_TO_IMAGE, EDIT_IMAGE, EDIT_TEXT, *STREAMING_TASKS.values())
}
