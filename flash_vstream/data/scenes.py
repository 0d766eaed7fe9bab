"""Procedural scenes of the synthetic video-QA data: plain backgrounds, 1-4 moving shapes, timed events.

A :class:`Scene` is a complete, immutable description of a clip; :func:`render_frame` computes any frame from it
by index alone (no state, no randomness), so a stream of 10,000 frames never has to be held in memory and the same
scene always renders the same pixels.

Vocabulary (every word the questions can use):

- shapes: circle, square, triangle, star;
- colours: red, green, blue, yellow, white, purple;
- motions: left, right, up, down, static (the object's centre moves by ``travel`` of the frame's side over the
  clip);
- events: ``appears`` (invisible before its frame), ``leaves`` (invisible from its frame on), ``changes``
  (another colour from its frame on) and ``flashes`` (drawn white for exactly one frame).

Shapes: h/w: frame height/width in pixels, t: frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 200),
}
MOTIONS = ("left", "right", "up", "down", "static")
EVENTS = ("appears", "leaves", "changes", "flashes")
# Dark, unsaturated backgrounds: no object colour is close to any of them.
BACKGROUNDS = ((20, 20, 20), (60, 60, 60), (30, 40, 60), (60, 45, 30), (25, 55, 50))
FLASH_COLOUR = COLOURS["white"]
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}


@dataclass(frozen=True)
class Event:
    """Something that happens to one object at one frame."""

    kind: str
    """One of :data:`EVENTS`."""
    frame: int
    """The frame it happens at (0-based)."""
    colour: str | None = None
    """The new colour of a ``changes`` event (else ``None``)."""

    def __post_init__(self) -> None:
        if self.kind not in EVENTS:
            raise ValueError(f"event kind {self.kind!r} is not one of {EVENTS}")
        if (self.kind == "changes") != (self.colour is not None):
            raise ValueError("a 'changes' event needs a colour, and only it has one")


@dataclass(frozen=True)
class SceneObject:
    """One shape: where it starts, how it moves, what happens to it."""

    shape: str
    """One of :data:`SHAPES`."""
    colour: str
    """One of :data:`COLOURS` (its colour at frame 0)."""
    motion: str
    """One of :data:`MOTIONS`."""
    x: float
    """Centre at frame 0, as a fraction of the frame width."""
    y: float
    """Centre at frame 0, as a fraction of the frame height."""
    size: float
    """Radius as a fraction of the frame height."""
    travel: float = 0.0
    """Distance the centre moves over the clip, as a fraction of the frame's side along the motion."""
    events: tuple[Event, ...] = ()
    """Its events, at most one of each kind."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {sorted(COLOURS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion {self.motion!r} is not one of {MOTIONS}")

    @property
    def name(self) -> str:
        """``"red circle"``: how questions refer to it."""
        return f"{self.colour} {self.shape}"

    def event(self, kind: str) -> Event | None:
        return next((e for e in self.events if e.kind == kind), None)

    def visible(self, t: int) -> bool:
        appear, leave = self.event("appears"), self.event("leaves")
        return (appear is None or t >= appear.frame) and (leave is None or t < leave.frame)

    def colour_at(self, t: int) -> str:
        change = self.event("changes")
        return change.colour if change is not None and t >= change.frame else self.colour

    def centre(self, t: int, num_frames: int) -> tuple[float, float]:
        """Centre at frame ``t`` as fractions of (width, height)."""
        progress = t / max(num_frames - 1, 1)
        dx, dy = _DIRECTIONS[self.motion]
        return self.x + dx * self.travel * progress, self.y + dy * self.travel * progress


@dataclass(frozen=True)
class Scene:
    """A whole clip: size, length, background and objects."""

    width: int
    height: int
    num_frames: int
    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def visible_objects(self, t: int) -> list[SceneObject]:
        return [obj for obj in self.objects if obj.visible(t)]


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin; ``dx``/``dy`` are pixel offsets from its centre."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        side = radius * 0.85
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # apex up, base at +0.8 radius
        top, bottom = -radius, 0.8 * radius
        half_width = (dy - top) / (bottom - top) * radius
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "star":  # five points: the boundary radius swings between 1 and 0.45 of the radius
        angle = np.arctan2(dx, -dy)  # 0 at the top point
        sector = (angle % (2 * math.pi / 5)) / (2 * math.pi / 5)  # 0..1 within one point
        boundary = radius * (0.45 + 0.55 * np.abs(1 - 2 * sector))
        return np.hypot(dx, dy) <= boundary
    raise ValueError(f"shape {shape!r} is not one of {SHAPES}")


def render_frame(scene: Scene, t: int) -> np.ndarray:
    """Frame ``t`` of ``scene`` as ``(h, w, 3)`` uint8 RGB; objects later in ``scene.objects`` are drawn on top."""
    if not 0 <= t < scene.num_frames:
        raise ValueError(f"frame {t} is outside the scene's {scene.num_frames} frames")
    frame = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    frame[:] = scene.background
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32) + 0.5  # pixel centres, (h, w)
    for obj in scene.objects:
        if not obj.visible(t):
            continue
        cx, cy = obj.centre(t, scene.num_frames)
        mask = shape_mask(obj.shape, xs - cx * scene.width, ys - cy * scene.height, obj.size * scene.height)
        flash = obj.event("flashes")
        frame[mask] = FLASH_COLOUR if flash is not None and flash.frame == t else COLOURS[obj.colour_at(t)]
    return frame


def object_map(scene: Scene, t: int) -> np.ndarray:
    """Which object each pixel of frame ``t`` shows, drawn in the same order as :func:`render_frame`.

    Returns:
        ``(h, w)`` int64: ``i + 1`` for ``scene.objects[i]``, 0 for the background.
    """
    owner = np.zeros((scene.height, scene.width), dtype=np.int64)
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32) + 0.5
    for i, obj in enumerate(scene.objects):
        if obj.visible(t):
            cx, cy = obj.centre(t, scene.num_frames)
            owner[shape_mask(obj.shape, xs - cx * scene.width, ys - cy * scene.height, obj.size * scene.height)] = i + 1
    return owner


def render(scene: Scene, frames: range | list[int] | None = None) -> np.ndarray:
    """``(t, h, w, 3)`` uint8 frames of ``scene`` (all of them, or the given indices)."""
    indices = range(scene.num_frames) if frames is None else frames
    return np.stack([render_frame(scene, t) for t in indices])
