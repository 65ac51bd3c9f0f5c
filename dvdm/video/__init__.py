"""Video I/O for dvdm: read/probe videos and frame folders, write MP4/GIF/PNG, resize/crop, pick clip frames.

Imports only numpy, PyAV and Pillow, because the torch-free serving component shares it.
"""

from dvdm.video.reader import (
    SUPPORTED_IMAGE_EXTENSIONS,
    SUPPORTED_VIDEO_EXTENSIONS,
    Video,
    VideoInfo,
    is_video_path,
    probe_video,
    read_video,
)
from dvdm.video.sampling import jittered_uniform_indices, sample_clip, sample_indices
from dvdm.video.transforms import center_crop, crop, resize, resize_short_side_and_center_crop
from dvdm.video.writer import write_frames, write_gif, write_mp4, write_png

__all__ = [
    "SUPPORTED_IMAGE_EXTENSIONS",
    "SUPPORTED_VIDEO_EXTENSIONS",
    "Video",
    "VideoInfo",
    "center_crop",
    "crop",
    "is_video_path",
    "jittered_uniform_indices",
    "probe_video",
    "read_video",
    "resize",
    "resize_short_side_and_center_crop",
    "sample_clip",
    "sample_indices",
    "write_frames",
    "write_gif",
    "write_mp4",
    "write_png",
]
