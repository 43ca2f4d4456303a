"""Client library of the stack (``genserve.client``): every task over gRPC (default) or HTTP."""

from genserve.client.aio import AsyncClient
from genserve.client.client import Client, ImageResult, OcrLine, OverloadedError, RequestError, ServerUnavailableError
from genserve.client.images import ImageLike, to_image_bytes
from genserve.client.pool import ClientPool

__all__ = [
    "AsyncClient",
    "Client",
    "ClientPool",
    "ImageResult",
    "OcrLine",
    "OverloadedError",
    "RequestError",
    "ServerUnavailableError",
    "ImageLike",
    "to_image_bytes",
]
