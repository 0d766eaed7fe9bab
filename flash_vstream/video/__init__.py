"""Video input: readers for files, frame folders and images, and pure frame-index policies."""

from flash_vstream.video.errors import VideoError
from flash_vstream.video.progress import PROGRESS_MIN_FRAMES
from flash_vstream.video.reader import VideoClip, VideoInfo, iter_video, probe_video, read_video
from flash_vstream.video.sampling import FrameSampler, fps_indices, segment_middle_indices, uniform_indices

__all__ = [
    "PROGRESS_MIN_FRAMES",
    "FrameSampler",
    "VideoClip",
    "VideoError",
    "VideoInfo",
    "fps_indices",
    "iter_video",
    "probe_video",
    "read_video",
    "segment_middle_indices",
    "uniform_indices",
]
