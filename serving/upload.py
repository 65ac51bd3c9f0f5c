"""The uploaded first frame: bytes -> uint8 RGB, decoded by Pillow from memory with a fixed set of
decoders; the filename and declared content type are never trusted, and the pixel count and aspect ratio
are checked from the header before any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np

from serving.errors import InvalidRequest

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # the only decoders Pillow may use on an upload


class BadUpload(InvalidRequest):
    """An upload that is not a usable image; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> np.ndarray:
    """Upload bytes -> uint8 RGB (H, W, 3). BadUpload (-> 4xx) for anything that is not a supported
    image, one with more than `max_pixels` pixels, or one whose long side is more than `max_aspect_ratio`
    times its short side (both checked from the header, before decoding): the pixel count bounds the
    decode, the aspect ratio the resize to the model's size, which scales the short side up."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadUpload("the image file is empty")
    try:
        # Image.open reads the header only; the pixel count is checked before any pixel is decoded
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            width, height = im.size
            if width < 1 or height < 1:
                raise BadUpload(f"the image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise BadUpload(f"the image is {width}x{height} = {width * height} pixels, more than the "
                                f"limit of {max_pixels} pixels; scale it down", 413)
            aspect = max(width, height) / min(width, height)
            if max_aspect_ratio is not None and aspect > max_aspect_ratio:
                ratio = f"{aspect:.1f}".removesuffix(".0")
                raise BadUpload(f"the image is {width}x{height}, an aspect ratio of {ratio}:1 (long side / "
                                f"short side), more than the limit of {max_aspect_ratio:g}:1; crop it closer to "
                                f"square", 422)
            im.seek(0)  # animated GIF/WebP: the first frame
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except BadUpload:
        raise
    except UnidentifiedImageError:
        raise BadUpload(f"the upload is not a supported image (send {', '.join(IMAGE_FORMATS)})", 415) from None
    except Image.DecompressionBombError as exc:
        raise BadUpload(f"the image is too large to decode safely ({exc})", 413) from None
    except Exception as exc:  # truncated or corrupt files raise OSError, SyntaxError, ValueError, ...
        raise BadUpload(f"the image could not be decoded ({type(exc).__name__}: {exc})"[:300]) from None
    return np.asarray(rgb, dtype=np.uint8)
