"""The bundled demo dataset: procedural, painting-like images for eight genres, written as a folder per genre.

Every image is composed from soft shapes (skies, hills, boats, buildings, faces, fruit, petals, haloes) drawn
with vectorised NumPy on slightly warped coordinates (wobbly, hand-drawn edges), then given brushwork: colour
dabs and noise smeared along a stroke-direction field. Compositions and colours are jittered and genres borrow
from each other on purpose (landscapes with boats, cityscapes under landscape skies, portraits with haloes,
still lifes with flowers), so a classifier learns something but never gets everything right.

Genre counts follow the Painter by Numbers proportions (portrait is about ten times flower painting). The
same seed gives the same bytes. `ensure_demo()` generates into a temporary folder and renames it into place,
so an interrupted generation never leaves a half demo behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from genre_core.util import fileio, paths
from genre_core.util.workers import file_lock, spawnable_main, worker_pool

GENERATOR_VERSION = 3
DEFAULT_SIZE = 128
DEFAULT_TOTAL = 600
MARKER_NAME = "demo.json"
JPEG_QUALITY = 90

# Painter by Numbers image counts of the eight demo genres (all_data_info.csv), spelled as PBN spells them.
PBN_COUNTS = {
    "portrait": 16847,
    "landscape": 15006,
    "abstract": 9498,
    "religious painting": 7429,
    "cityscape": 5348,
    "still life": 3132,
    "marina": 1805,
    "flower painting": 1606,
}
DEMO_GENRES = tuple(sorted(PBN_COUNTS))
# Genres whose compositions a few images of each genre borrow entirely (see painted_genre).
BORROW_RATE = 0.04
NEIGHBOURS = {
    "abstract": ("landscape", "still life"),
    "cityscape": ("landscape", "marina"),
    "flower painting": ("still life",),
    "landscape": ("marina", "cityscape"),
    "marina": ("landscape",),
    "portrait": ("religious painting",),
    "religious painting": ("portrait",),
    "still life": ("flower painting",),
}

Progress = Callable[[dict], None]


def demo_counts(total: int = DEFAULT_TOTAL) -> dict[str, int]:
    """Images per genre for a demo of about `total` images, in Painter by Numbers proportions."""
    if total < 10 * len(PBN_COUNTS):
        raise ValueError(f"a demo needs at least {10 * len(PBN_COUNTS)} images to keep the genre proportions, got {total}")
    scale = total / sum(PBN_COUNTS.values())
    return {genre: max(1, round(count * scale)) for genre, count in PBN_COUNTS.items()}


def generate_demo_image(genre: str, seed: int = 0, size: int = DEFAULT_SIZE, index: int = 0) -> np.ndarray:
    """Paint one demo image of `genre` as uint8 (size, size, 3); the same arguments give the same array."""
    if genre not in PBN_COUNTS:
        raise ValueError(f"unknown demo genre {genre!r}; choose one of: {', '.join(DEMO_GENRES)}")
    size = int(size)
    if size < 16 or size > 1024:
        raise ValueError(f"demo image size must be 16..1024 pixels, got {size}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, DEMO_GENRES.index(genre), int(index)])
    painter = _Painter(rng, size)
    _PAINTERS[painted_genre(genre, seed, index)](painter)
    return painter.finish()


def painted_genre(genre: str, seed: int = 0, index: int = 0) -> str:
    """The genre whose composition demo image `index` of `genre` uses: itself, or (rarely) a neighbour's.

    About BORROW_RATE of the images are painted as a neighbouring genre but filed under their own, the way
    real genre labels are sometimes debatable; `demo.json` lists them, so label-issue tools can be checked.
    """
    if genre not in PBN_COUNTS:
        raise ValueError(f"unknown demo genre {genre!r}; choose one of: {', '.join(DEMO_GENRES)}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, DEMO_GENRES.index(genre), int(index), 1])
    if rng.random() >= BORROW_RATE:
        return genre
    neighbours = NEIGHBOURS[genre]
    return neighbours[int(rng.integers(len(neighbours)))]


def ensure_demo(
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    total: int = DEFAULT_TOTAL,
    workers: int | None = None,
) -> Path:
    """Generate the demo dataset into `root` (default paths.demo_dir()) unless it is already there; return root.

    The folder holds one sub-folder per genre of JPEG files and a `demo.json` marker with the generator
    version, seed, size and counts; a missing or different marker, or missing files, regenerate it.
    """
    root = Path(root) if root is not None else paths.demo_dir()
    counts = demo_counts(total)
    expected = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "size": int(size), "counts": counts}
    if _demo_is_current(root, expected):
        _report(progress, sum(counts.values()), sum(counts.values()), "demo dataset already generated")
        return root
    _refuse_foreign_folder(root)
    root.parent.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        _report(progress, 0, sum(counts.values()), "waiting for another process that is generating the demo")

    # One generator at a time; whoever waited finds the finished demo and returns at once.
    with file_lock(root.parent / f".{root.name}.lock", on_wait=waiting):
        if _demo_is_current(root, expected):
            _report(progress, sum(counts.values()), sum(counts.values()), "demo dataset already generated")
            return root
        _generate_and_swap(root, expected, progress, workers)
    return root


def _generate_and_swap(root: Path, expected: dict, progress: Progress | None, workers: int | None) -> None:
    """Paint the demo into a temporary sibling folder, write its marker, then rename it to `root`."""
    counts, seed, size = expected["counts"], expected["seed"], expected["size"]
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    try:
        _generate_into(partial, counts, seed, size, progress, workers)
        borrowed = [
            {"file": f"{genre}/{_file_name(genre, index)}", "genre": genre, "painted_as": painted_genre(genre, seed, index)}
            for genre, count in counts.items() for index in range(count)
            if painted_genre(genre, seed, index) != genre
        ]
        marker = dict(expected, files=sum(counts.values()), borrowed=borrowed,
                      seconds=round(time.perf_counter() - started, 2))
        fileio.atomic_write_json(partial / MARKER_NAME, marker)
        _swap_into_place(partial, root, expected)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _demo_is_current(root: Path, expected: dict) -> bool:
    """True if `root` holds a finished demo made with exactly these parameters and all its files."""
    try:
        marker = fileio.read_json(root / MARKER_NAME, None)
    except (ValueError, OSError):
        return False
    if not marker or any(marker.get(key) != value for key, value in expected.items()):
        return False
    for genre, count in expected["counts"].items():
        folder = root / genre
        if not folder.is_dir() or sum(1 for name in os.listdir(folder) if name.endswith(".jpg")) != count:
            return False
    return True


def _refuse_foreign_folder(root: Path) -> None:
    """Raise ValueError if `root` exists but is not a demo folder: regenerating would delete someone's files."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose another place for the demo dataset")
    if not (root / MARKER_NAME).exists() and any(root.iterdir()):
        raise ValueError(f"{root} holds files but no {MARKER_NAME}: it is not a demo folder, so it will not be replaced")


def _swap_into_place(partial: Path, root: Path, expected: dict) -> None:
    """Rename the finished folder to `root`, moving an old demo aside first (another process may have won)."""
    if root.exists():
        if _demo_is_current(root, expected):
            return
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        os.replace(root, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(partial, root)
    except OSError:
        # Another process renamed its finished demo into place between our check and our rename.
        if not _demo_is_current(root, expected):
            raise


def _file_name(genre: str, index: int) -> str:
    """The file name of one demo image, e.g. "still_life_0007.jpg"."""
    return f"{genre.replace(' ', '_')}_{index:04d}.jpg"


def _generate_into(folder: Path, counts: dict[str, int], seed: int, size: int, progress: Progress | None, workers: int | None) -> None:
    """Paint and write every image of the demo into `folder`, in parallel workers when that pays off."""
    for genre in counts:
        (folder / genre).mkdir(parents=True, exist_ok=True)
    jobs = [(genre, start, min(start + 50, count)) for genre, count in counts.items() for start in range(0, count, 50)]
    total = sum(counts.values())
    done = 0
    _report(progress, 0, total, "painting the demo dataset")
    worker_count = max(1, min(len(jobs), workers if workers is not None else (os.cpu_count() or 1)))
    if worker_count == 1 or size <= 64:
        finished = (_write_images(str(folder), genre, start, stop, seed, size) for genre, start, stop in jobs)
        for written in finished:
            done += written
            _report(progress, done, total, f"painted {done}/{total} demo images")
        return
    with worker_pool(worker_count) as pool:
        with spawnable_main():
            futures = [pool.submit(_write_images, str(folder), genre, start, stop, seed, size) for genre, start, stop in jobs]
        for future in concurrent.futures.as_completed(futures):
            done += future.result()
            _report(progress, done, total, f"painted {done}/{total} demo images")


def _write_images(folder: str, genre: str, start: int, stop: int, seed: int, size: int) -> int:
    """Paint images [start, stop) of one genre and write them as quality-90 JPEGs; return how many."""
    from PIL import Image

    for index in range(start, stop):
        array = generate_demo_image(genre, seed, size, index=index)
        # A plain write is enough: the whole folder is renamed into place only once it is complete.
        Image.fromarray(array, "RGB").save(Path(folder) / genre / _file_name(genre, index), format="JPEG", quality=JPEG_QUALITY)
    return stop - start


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    """Send one progress event, if anyone listens."""
    if progress is not None:
        progress({"stage": "demo", "done": int(done), "total": int(total), "message": message})


# ----------------------------------------------------------------------------------------------------------
# Drawing. Coordinates are in 0..1 (x to the right, y downwards); a shape is a signed distance field
# (negative inside), turned into a soft mask one pixel wide and blended onto a float canvas in 0..1.
# ----------------------------------------------------------------------------------------------------------

SKIES = {
    "day": ((0.35, 0.55, 0.85), (0.78, 0.85, 0.92)),
    "sunset": ((0.35, 0.35, 0.6), (0.98, 0.7, 0.42)),
    "grey": ((0.55, 0.58, 0.62), (0.8, 0.8, 0.78)),
    "dusk": ((0.12, 0.15, 0.32), (0.55, 0.45, 0.55)),
    "storm": ((0.22, 0.24, 0.28), (0.55, 0.57, 0.58)),
}
GREENS = ((0.25, 0.42, 0.18), (0.42, 0.5, 0.22), (0.55, 0.5, 0.25), (0.2, 0.32, 0.2), (0.62, 0.55, 0.3))
DARK_GROUNDS = ((0.12, 0.09, 0.06), (0.16, 0.16, 0.1), (0.06, 0.06, 0.06), (0.25, 0.08, 0.06), (0.08, 0.13, 0.1))
SKIN = ((0.92, 0.74, 0.6), (0.85, 0.65, 0.5), (0.7, 0.5, 0.38), (0.95, 0.82, 0.7), (0.55, 0.38, 0.28))
HAIR = ((0.1, 0.07, 0.05), (0.3, 0.18, 0.1), (0.55, 0.4, 0.2), (0.8, 0.68, 0.4), (0.45, 0.43, 0.4))
CLOTH = ((0.1, 0.1, 0.14), (0.35, 0.08, 0.08), (0.12, 0.2, 0.4), (0.2, 0.25, 0.15), (0.85, 0.83, 0.78), (0.4, 0.3, 0.2))
BUILDINGS = ((0.75, 0.62, 0.45), (0.6, 0.58, 0.55), (0.62, 0.35, 0.25), (0.85, 0.8, 0.7), (0.45, 0.42, 0.4))
FLOWERS = ((0.85, 0.12, 0.12), (0.95, 0.6, 0.7), (0.96, 0.95, 0.9), (0.98, 0.82, 0.2), (0.35, 0.35, 0.8),
           (0.6, 0.25, 0.65), (0.98, 0.5, 0.15))
FRUIT = ((0.8, 0.15, 0.1), (0.95, 0.55, 0.1), (0.9, 0.8, 0.2), (0.45, 0.6, 0.15), (0.45, 0.15, 0.35))
GOLD = np.array((0.83, 0.66, 0.27))
BOLD = ((0.85, 0.15, 0.12), (0.95, 0.8, 0.15), (0.1, 0.25, 0.65), (0.05, 0.05, 0.05), (0.95, 0.95, 0.92),
        (0.2, 0.55, 0.35), (0.95, 0.45, 0.1), (0.45, 0.2, 0.55))


class _Painter:
    """A float canvas plus the shape and brushwork helpers the genre painters use."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        pixel_y, pixel_x = np.mgrid[0:size, 0:size].astype(np.float32)
        self.pixel_x, self.pixel_y = pixel_x, pixel_y
        # Warped coordinates give every edge a slight hand-drawn wobble.
        wobble = 0.012
        self.x = (pixel_x + 0.5) / size + wobble * self.smooth_noise(5)
        self.y = (pixel_y + 0.5) / size + wobble * self.smooth_noise(5)
        self.edge = 1.3 / size
        self.canvas = np.zeros((size, size, 3), dtype=np.float32)
        self.stroke_angle = 0.0
        self.stroke_variation = 0.6
        self.stroke_length = 0.035
        self.aged = False

    # Randomness helpers.
    def smooth_noise(self, cells: int) -> np.ndarray:
        """Smooth random field (about unit variance) from a cells x cells grid, bilinearly upsampled."""
        grid = self.rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        position = np.linspace(0, cells, self.size, dtype=np.float32)
        low = np.minimum(position.astype(np.int32), cells - 1)
        frac = position - low.astype(np.float32)
        rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
        return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]

    def jitter(self, color, amount: float = 0.05) -> np.ndarray:
        """A colour with a little random variation."""
        return np.clip(np.asarray(color, dtype=np.float32) + self.rng.normal(0, amount, 3), 0, 1).astype(np.float32)

    def pick(self, options, amount: float = 0.05) -> np.ndarray:
        """A jittered random colour from a palette."""
        return self.jitter(options[self.rng.integers(len(options))], amount)

    def chance(self, probability: float) -> bool:
        """True with the given probability."""
        return bool(self.rng.random() < probability)

    # Shapes: signed distances, negative inside.
    def ellipse(self, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
        dx, dy = self.x - cx, self.y - cy
        if angle:
            c, s = np.cos(angle), np.sin(angle)
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        radius = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
        return (radius - 1.0) * min(rx, ry)

    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        return np.maximum(np.maximum(x0 - self.x, self.x - x1), np.maximum(y0 - self.y, self.y - y1))

    def polygon(self, points) -> np.ndarray:
        """Convex polygon from its corners (either winding)."""
        points = np.asarray(points, dtype=np.float32)
        area = np.sum(points[:, 0] * np.roll(points[:, 1], -1) - np.roll(points[:, 0], -1) * points[:, 1])
        sign = 1.0 if area > 0 else -1.0
        distance = np.full(self.x.shape, -np.inf, dtype=np.float32)
        for (ax, ay), (bx, by) in zip(points, np.roll(points, -1, axis=0)):
            length = np.hypot(bx - ax, by - ay) or 1.0
            side = ((self.x - ax) * (by - ay) - (self.y - ay) * (bx - ax)) / length
            distance = np.maximum(distance, sign * side)
        return distance

    def capsule(self, ax, ay, bx, by, width) -> np.ndarray:
        """A thick straight stroke from (ax, ay) to (bx, by)."""
        vx, vy = bx - ax, by - ay
        t = np.clip(((self.x - ax) * vx + (self.y - ay) * vy) / (vx * vx + vy * vy + 1e-9), 0, 1)
        return np.hypot(self.x - ax - t * vx, self.y - ay - t * vy) - width / 2

    def below(self, base, amplitude, waves: int = 3) -> np.ndarray:
        """The region under a wavy ridge line (hills, waves, a skyline of hills)."""
        height = np.full(self.size, base, dtype=np.float32)
        xs = np.linspace(0, 1, self.size, dtype=np.float32)
        for wave in range(waves):
            frequency = self.rng.uniform(0.6, 2.2) * (wave + 1)
            height += amplitude / (wave + 1) * np.sin(2 * np.pi * frequency * xs + self.rng.uniform(0, 2 * np.pi))
        return height[None, :] - self.y

    # Painting.
    def fill(self, distance: np.ndarray, color, alpha: float = 1.0, edge: float | None = None) -> None:
        """Blend `color` (RGB, or an H x W x 3 field) inside the shape."""
        mask = np.clip(0.5 - distance / np.float32(edge or self.edge), 0, 1)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return
        # Blend only inside the shape's bounding box: most shapes are small.
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        color = np.asarray(color, dtype=np.float32)
        if color.ndim == 3:
            color = color[window]
        region = self.canvas[window]
        region += (color - region) * (mask[window] * np.float32(alpha))[..., None]

    def vertical(self, top, bottom, y0: float = 0.0, y1: float = 1.0) -> np.ndarray:
        """A colour field fading from `top` at y0 to `bottom` at y1."""
        t = np.clip((self.y - y0) / max(y1 - y0, 1e-6), 0, 1)[..., None]
        return (np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t).astype(np.float32)

    def lit(self, color, cx, cy, radius, low: float = 0.55, high: float = 1.15) -> np.ndarray:
        """A colour field lit from (cx, cy): bright near the light, darker away from it."""
        light = np.clip(1 - np.hypot(self.x - cx, self.y - cy) / radius, 0, 1)
        return np.clip(np.asarray(color, np.float32) * (low + (high - low) * light)[..., None], 0, 1)

    def sky(self, horizon: float, kind: str | None = None) -> str:
        """Paint a sky gradient down to the horizon (and below, for whatever comes next); return its kind."""
        kind = kind or str(self.rng.choice(list(SKIES)))
        top, bottom = SKIES[kind]
        self.canvas[:] = self.vertical(self.jitter(top, 0.06), self.jitter(bottom, 0.06), 0.0, horizon)
        if kind in ("day", "grey", "storm") and self.chance(0.8):
            for _ in range(self.rng.integers(1, 5)):
                cx, cy = self.rng.uniform(0, 1), self.rng.uniform(0.05, horizon * 0.8)
                tone = self.jitter((0.95, 0.95, 0.93) if kind == "day" else (0.45, 0.46, 0.5), 0.04)
                for _ in range(self.rng.integers(2, 5)):
                    self.fill(self.ellipse(cx + self.rng.normal(0, 0.06), cy + self.rng.normal(0, 0.015),
                                           self.rng.uniform(0.05, 0.12), self.rng.uniform(0.02, 0.045)),
                              tone, alpha=0.75, edge=0.03)
        if kind in ("sunset", "day", "dusk") and self.chance(0.35):
            sun = (1.0, 0.92, 0.6) if kind != "dusk" else (0.95, 0.95, 0.85)
            self.fill(self.ellipse(self.rng.uniform(0.15, 0.85), self.rng.uniform(0.1, horizon * 0.85), 0.05, 0.05),
                      self.jitter(sun, 0.03), edge=0.012)
        return kind

    def smear(self, image: np.ndarray, cos: np.ndarray, sin: np.ndarray, length: float, taps: int) -> np.ndarray:
        """Average `image` along the stroke direction (line-integral convolution with `taps` samples)."""
        size = self.size
        flat = image.reshape(size * size, -1)
        total = np.zeros_like(flat)
        reach = length * size
        for step in np.linspace(-reach, reach, taps, dtype=np.float32):
            rows = np.clip(np.rint(self.pixel_y + step * sin), 0, size - 1)
            cols = np.clip(np.rint(self.pixel_x + step * cos), 0, size - 1)
            total += np.take(flat, (rows * size + cols).astype(np.intp).ravel(), axis=0)
        return (total / np.float32(taps)).reshape(image.shape)

    def finish(self) -> np.ndarray:
        """Brushwork (dabs and streaks along a direction field), varnish and canvas grain; return uint8."""
        rng, size = self.rng, self.size
        angle = self.stroke_angle + self.stroke_variation * np.float32(np.pi * 0.3) * self.smooth_noise(3)
        cos, sin = np.cos(angle), np.sin(angle)
        # Colour dabs on a coarse grid (mostly lightness, a little hue) become elongated strokes once smeared
        # along the direction field; fine noise smeared the same way gives the bristle streaks.
        cells = max(4, size // 5)
        dabs = rng.normal(0, 0.04, (cells, cells, 1)) + rng.normal(0, 0.015, (cells, cells, 3))
        # Looking the dabs up at jittered, warped positions gives them ragged edges instead of grid squares.
        jitter = rng.uniform(-0.6, 0.6, (2, size, size)).astype(np.float32) / cells
        rows = np.clip((self.y + jitter[0]) * cells, 0, cells - 1).astype(np.intp)
        cols = np.clip((self.x + jitter[1]) * cells, 0, cells - 1).astype(np.intp)
        painted = self.canvas + dabs.astype(np.float32)[rows, cols]
        painted = self.smear(painted, cos, sin, self.stroke_length * 0.6, 5)
        streaks = self.smear(rng.standard_normal((size, size)).astype(np.float32), cos, sin, self.stroke_length, 9)
        streaks /= streaks.std() + 1e-6
        painted *= (1 + 0.045 * streaks)[..., None]
        if self.aged:
            varnish = np.array((0.78, 0.62, 0.38), dtype=np.float32)
            painted = painted * 0.82 + varnish * 0.18 * painted.mean(axis=2, keepdims=True) / 0.5
        vignette = 1 - 0.18 * (((self.pixel_x / size - 0.5) ** 2 + (self.pixel_y / size - 0.5) ** 2) / 0.5)
        painted *= vignette[..., None]
        painted *= self.jitter((1.0, 1.0, 1.0), 0.03)
        grain = 0.015 * np.sin(self.pixel_x * 2.1) * np.sin(self.pixel_y * 2.1)
        painted += (grain + rng.normal(0, 0.01, grain.shape).astype(np.float32))[..., None]
        return np.clip(np.rint(painted * 255), 0, 255).astype(np.uint8)


# Genre painters. Each sets the stroke style and paints a composition, borrowing from other genres sometimes.

def _trees(p: _Painter, count: int, top: float) -> None:
    for _ in range(count):
        cx, cy = p.rng.uniform(0.02, 0.98), p.rng.uniform(top, 0.92)
        scale = 0.5 + cy
        p.fill(p.rect(cx - 0.006 * scale, cy, cx + 0.006 * scale, cy + 0.06 * scale), p.jitter((0.25, 0.17, 0.1)))
        p.fill(p.ellipse(cx, cy - 0.01, p.rng.uniform(0.025, 0.05) * scale, p.rng.uniform(0.035, 0.07) * scale),
               p.lit(p.pick(GREENS) * 0.7, cx - 0.03, cy - 0.05, 0.12))


def _boat(p: _Painter, cx: float, waterline: float, scale: float) -> None:
    hull = np.maximum(p.ellipse(cx, waterline - 0.005 * scale, 0.09 * scale, 0.03 * scale), waterline - 0.02 * scale - p.y)
    p.fill(hull, p.pick(((0.3, 0.2, 0.12), (0.15, 0.15, 0.15), (0.55, 0.2, 0.12))))
    mast_top = waterline - 0.16 * scale
    p.fill(p.rect(cx - 0.003 * scale - 0.5 / p.size, mast_top, cx + 0.003 * scale + 0.5 / p.size, waterline - 0.02 * scale),
           p.jitter((0.2, 0.15, 0.1)))
    if p.chance(0.85):
        side = 1 if p.chance(0.5) else -1
        sail = [(cx + side * 0.006, mast_top + 0.01), (cx + side * 0.006, waterline - 0.03 * scale),
                (cx + side * p.rng.uniform(0.05, 0.09) * scale, waterline - 0.03 * scale)]
        p.fill(p.polygon(sail), p.pick(((0.95, 0.93, 0.85), (0.85, 0.75, 0.55), (0.7, 0.3, 0.2))))


def _water(p: _Painter, top: float, bottom: float = 1.0) -> None:
    near = p.pick(((0.1, 0.25, 0.35), (0.15, 0.3, 0.28), (0.2, 0.22, 0.3)))
    far = np.clip(p.canvas[max(0, int(top * p.size) - 2)].mean(axis=0) * 0.6 + near * 0.4 + 0.08, 0, 1)
    p.fill(np.maximum(top - p.y, p.y - bottom), p.vertical(far, near, top, bottom))
    waves = 0.5 + 0.5 * np.sin(p.y * p.size * 0.9 + 3 * p.smooth_noise(6))
    crest = np.where((p.y > top) & (p.y < bottom), waves - 0.85, 1.0)
    p.fill(crest, p.jitter((0.85, 0.88, 0.9), 0.04), alpha=0.35, edge=0.05)


def _buildings(p: _Painter, street: float, tallest: float, dusk: bool) -> None:
    x = p.rng.uniform(-0.05, 0.02)
    while x < 1.0:
        width = p.rng.uniform(0.06, 0.16)
        top = street - p.rng.uniform(0.3 * tallest, tallest)
        color = p.pick(BUILDINGS, 0.06) * (0.55 if dusk else 1.0)
        body = p.rect(x, top, x + width, street)
        p.fill(body, p.lit(color, x, top, 0.5, 0.8, 1.05))
        if p.chance(0.3):
            p.fill(p.polygon([(x - 0.01, top + 0.002), (x + width + 0.01, top + 0.002), (x + width / 2, top - 0.05)]),
                   p.jitter((0.45, 0.22, 0.15) if not dusk else (0.2, 0.12, 0.1)))
        elif p.chance(0.15):
            p.fill(p.ellipse(x + width / 2, top, width * 0.4, width * 0.45), p.jitter((0.5, 0.55, 0.5)))
        spacing = p.rng.uniform(0.025, 0.04)
        window_color = (0.98, 0.85, 0.45) if dusk else (0.22, 0.22, 0.28)
        local_x, local_y = (p.x - x) / spacing, (p.y - top) / spacing
        windows = np.maximum(np.abs(local_x - np.floor(local_x) - 0.5) - 0.22, np.abs(local_y - np.floor(local_y) - 0.5) - 0.25)
        p.fill(np.maximum(windows * spacing, body + 0.015), p.jitter(window_color), alpha=0.85)
        x += width + p.rng.uniform(-0.02, 0.03)


def _face(p: _Painter, cx: float, cy: float, scale: float, halo: bool) -> None:
    rx, ry = 0.14 * scale, 0.19 * scale
    if halo:
        p.fill(p.ellipse(cx, cy - 0.03 * scale, rx * 1.9, rx * 1.9), p.jitter(GOLD * 1.1, 0.04))
        p.fill(np.abs(p.ellipse(cx, cy - 0.03 * scale, rx * 1.9, rx * 1.9)) - 0.004, p.jitter((0.6, 0.42, 0.15)), alpha=0.7)
    hair = p.pick(HAIR)
    p.fill(p.ellipse(cx, cy - 0.04 * scale, rx * 1.2, ry * 1.05), hair)
    skin = p.pick(SKIN)
    light_x = cx + p.rng.choice((-1, 1)) * rx * 0.8
    p.fill(p.ellipse(cx, cy, rx, ry), p.lit(skin, light_x, cy - ry * 0.4, rx * 2.6, 0.6, 1.12))
    eye_y = cy - ry * 0.12
    for side in (-1, 1):
        p.fill(p.ellipse(cx + side * rx * 0.4, eye_y, rx * 0.15, ry * 0.06), p.jitter((0.15, 0.1, 0.08)))
        p.fill(p.capsule(cx + side * rx * 0.2, eye_y - ry * 0.16, cx + side * rx * 0.6, eye_y - ry * 0.18, ry * 0.04),
               hair * 0.8, alpha=0.8)
    p.fill(p.capsule(cx, eye_y + ry * 0.05, cx + rx * 0.06, cy + ry * 0.25, rx * 0.08), skin * 0.7, alpha=0.5)
    p.fill(p.ellipse(cx, cy + ry * 0.5, rx * 0.3, ry * 0.07), p.jitter((0.65, 0.25, 0.22)))
    # A fringe over the forehead.
    p.fill(np.maximum(p.ellipse(cx, cy - ry * 0.55, rx * 1.05, ry * 0.5), p.y - (cy - ry * 0.6)), hair)


def _landscape(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = 0.0, 0.5, 0.04
    horizon = p.rng.uniform(0.38, 0.62)
    p.sky(horizon)
    far = np.clip(p.canvas[int(horizon * p.size)].mean(axis=0) * 0.6 + np.array((0.25, 0.3, 0.35)) * 0.4, 0, 1)
    p.fill(p.below(horizon - p.rng.uniform(0.02, 0.1), p.rng.uniform(0.02, 0.07)), p.jitter(far, 0.04))
    if p.chance(0.15):  # A distant town borrows from cityscapes.
        _buildings(p, horizon + 0.02, 0.08, dusk=False)
    if p.chance(0.12):  # A coastal view borrows from marinas: sea to the bottom, a strip of shore.
        _water(p, horizon, 1.02)
        p.fill(p.below(p.rng.uniform(0.8, 0.92), 0.03), p.jitter((0.75, 0.68, 0.5)))
        _trees(p, int(p.rng.integers(0, 3)), 0.85)
        return
    lake = p.chance(0.3)
    ground_top = horizon + p.rng.uniform(0.0, 0.08)
    green = p.pick(GREENS, 0.06)
    p.fill(p.below(ground_top, p.rng.uniform(0.015, 0.06)), p.vertical(green * 1.1, green * 0.55, ground_top, 1.0))
    if lake:
        top = ground_top + p.rng.uniform(0.05, 0.15)
        _water(p, top, top + p.rng.uniform(0.1, 0.2))
        if p.chance(0.4):  # Boats on the lake borrow from marinas.
            _boat(p, p.rng.uniform(0.2, 0.8), top + 0.06, 0.6)
    _trees(p, int(p.rng.integers(0, 12)), ground_top + 0.02)
    if p.chance(0.3):
        path_x = p.rng.uniform(0.3, 0.7)
        p.fill(p.polygon([(path_x - 0.01, ground_top + 0.08), (path_x + 0.01, ground_top + 0.08), (path_x + 0.15, 1.02),
                          (path_x - 0.1, 1.02)]), p.jitter((0.7, 0.62, 0.45)), alpha=0.8)


def _marina(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = 0.0, 0.25, 0.05
    horizon = p.rng.uniform(0.35, 0.62)
    kind = p.sky(horizon, str(p.rng.choice(["day", "day", "sunset", "grey", "storm"])))
    _water(p, horizon, 1.02)
    if p.chance(0.4):  # A headland borrows from landscapes.
        side = p.rng.choice((-0.1, 1.1))
        p.fill(p.ellipse(side, horizon + 0.05, p.rng.uniform(0.25, 0.45), p.rng.uniform(0.08, 0.2)),
               p.vertical(p.pick(GREENS), p.jitter((0.35, 0.3, 0.22)), horizon - 0.1, horizon + 0.2))
    if p.chance(0.12):
        _buildings(p, horizon + 0.005, 0.06, dusk=kind == "storm")
    for _ in range(int(p.rng.integers(1, 5))):
        waterline = p.rng.uniform(horizon + 0.04, 0.92)
        _boat(p, p.rng.uniform(0.1, 0.9), waterline, 0.5 + 2.0 * (waterline - horizon))


def _cityscape(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = np.pi / 2 * p.rng.choice((0, 1)), 0.5, 0.03
    if p.chance(0.2):  # A village in a landscape: low houses, green ground and trees.
        horizon = p.rng.uniform(0.45, 0.6)
        p.sky(horizon)
        green = p.pick(GREENS, 0.06)
        p.fill(p.below(horizon, 0.03), p.vertical(green * 1.1, green * 0.6, horizon, 1.0))
        _buildings(p, horizon + p.rng.uniform(0.05, 0.15), p.rng.uniform(0.12, 0.25), dusk=False)
        _trees(p, int(p.rng.integers(0, 6)), horizon + 0.15)
        return
    street = p.rng.uniform(0.62, 0.85)
    kind = p.sky(street - 0.2, str(p.rng.choice(["day", "grey", "dusk", "sunset", "day"])))
    if p.chance(0.25):  # Hills behind the skyline borrow from landscapes.
        p.fill(p.below(street - p.rng.uniform(0.3, 0.4), 0.05), p.jitter(p.pick(GREENS) * 0.8))
    _buildings(p, street, p.rng.uniform(0.25, 0.5), dusk=kind == "dusk")
    if p.chance(0.2):  # A river in front borrows from marinas.
        _water(p, street, 1.02)
        if p.chance(0.5):
            _boat(p, p.rng.uniform(0.2, 0.8), p.rng.uniform(street + 0.08, 0.95), 0.8)
    else:
        p.fill(p.y * 0 + (street - p.y), p.vertical(p.jitter((0.55, 0.5, 0.45)), p.jitter((0.35, 0.3, 0.27)), street, 1.0))
        for _ in range(int(p.rng.integers(0, 6))):
            fx, fy = p.rng.uniform(0.05, 0.95), p.rng.uniform(street + 0.03, 0.95)
            p.fill(p.ellipse(fx, fy, 0.008 + 0.02 * (fy - street), 0.03 + 0.06 * (fy - street)), p.pick(CLOTH))


def _portrait(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = p.rng.uniform(-0.8, 0.8), 0.9, 0.03
    p.aged = p.chance(0.6)
    ground = p.pick(DARK_GROUNDS, 0.04)
    p.canvas[:] = p.lit(ground, p.rng.uniform(0.2, 0.8), p.rng.uniform(0.2, 0.5), 0.9, 0.7, 1.6)
    if p.chance(0.12):  # A window onto a landscape, as in Renaissance portraits.
        x0 = p.rng.choice((0.0, 0.68))
        window = p.rect(x0, 0.1, x0 + 0.32, 0.55)
        p.fill(window, p.vertical(p.jitter(SKIES["day"][0]), p.jitter(SKIES["day"][1]), 0.1, 0.4))
        p.fill(np.maximum(window, p.below(0.4, 0.03)), p.pick(GREENS))
    if p.chance(0.05):  # A gold ground borrows from religious paintings.
        p.canvas[:] = p.jitter(GOLD, 0.05)
    _bust(p, halo=p.chance(0.1))


def _bust(p: _Painter, halo: bool) -> None:
    cx, cy = 0.5 + p.rng.normal(0, 0.05), p.rng.uniform(0.33, 0.45)
    scale = p.rng.uniform(0.85, 1.25)
    cloth = p.pick(CLOTH)
    p.fill(p.ellipse(cx + p.rng.normal(0, 0.03), cy + 0.55 * scale, 0.38 * scale, 0.33 * scale),
           p.lit(cloth, cx - 0.1, cy + 0.3, 0.6, 0.6, 1.1))
    if p.chance(0.4):
        p.fill(p.ellipse(cx, cy + 0.25 * scale, 0.08 * scale, 0.04 * scale), p.jitter((0.92, 0.9, 0.85)))
    p.fill(p.rect(cx - 0.05 * scale, cy + 0.1 * scale, cx + 0.05 * scale, cy + 0.26 * scale), p.pick(SKIN) * 0.8)
    _face(p, cx, cy, scale, halo=halo)


def _still_life(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = p.rng.uniform(-0.5, 0.5), 0.8, 0.025
    p.aged = p.chance(0.5)
    table = p.rng.uniform(0.55, 0.72)
    p.canvas[:] = p.lit(p.pick(DARK_GROUNDS + ((0.45, 0.4, 0.32), (0.55, 0.55, 0.5)), 0.04), 0.25, 0.2, 1.0, 0.6, 1.5)
    cloth = p.pick(((0.4, 0.25, 0.12), (0.9, 0.88, 0.82), (0.3, 0.15, 0.1), (0.25, 0.3, 0.45)))
    p.fill(table - p.y, p.vertical(cloth * 1.1, cloth * 0.7, table, 1.0))
    if p.chance(0.35):  # A vase with a few flowers borrows from flower paintings.
        _bouquet(p, p.rng.uniform(0.25, 0.75), table, int(p.rng.integers(2, 6)), 0.7)
    for _ in range(int(p.rng.integers(0, 3))):
        bx = p.rng.uniform(0.15, 0.85)
        height = p.rng.uniform(0.2, 0.35)
        glass = p.pick(((0.15, 0.3, 0.15), (0.35, 0.2, 0.1), (0.75, 0.72, 0.65)))
        p.fill(p.rect(bx - 0.04, table - height * 0.65, bx + 0.04, table + 0.01), p.lit(glass, bx - 0.03, table - 0.2, 0.3))
        p.fill(p.rect(bx - 0.012, table - height, bx + 0.012, table - height * 0.6), glass)
    for _ in range(int(p.rng.integers(2, 7))):
        fx = p.rng.uniform(0.12, 0.88)
        radius = p.rng.uniform(0.04, 0.09)
        fy = table + p.rng.uniform(0.0, 0.12) - radius * 0.6
        p.fill(p.ellipse(fx + 0.02, fy + radius * 0.8, radius * 1.1, radius * 0.3), cloth * 0.45, alpha=0.6, edge=0.02)
        p.fill(p.ellipse(fx, fy, radius, radius * p.rng.uniform(0.85, 1.05)),
               p.lit(p.pick(FRUIT), fx - radius * 0.4, fy - radius * 0.4, radius * 2.2, 0.45, 1.2))
        p.fill(p.ellipse(fx - radius * 0.35, fy - radius * 0.35, radius * 0.18, radius * 0.12), p.jitter((1, 0.97, 0.9)), alpha=0.7)


def _bouquet(p: _Painter, cx: float, table: float, flowers: int, scale: float) -> None:
    vase_height = 0.2 * scale
    vase = p.pick(((0.25, 0.35, 0.55), (0.7, 0.65, 0.55), (0.45, 0.3, 0.2), (0.2, 0.4, 0.3)))
    p.fill(p.ellipse(cx, table - vase_height * 0.45, 0.075 * scale, vase_height * 0.55), p.lit(vase, cx - 0.04, table - 0.15, 0.25))
    top = table - vase_height
    for _ in range(flowers * 2):
        angle = p.rng.uniform(0, 2 * np.pi)
        lx, ly = cx + np.cos(angle) * 0.18 * scale, top - 0.12 * scale + np.sin(angle) * 0.15 * scale
        p.fill(p.ellipse(lx, ly, 0.05 * scale, 0.018 * scale, angle), p.jitter(GREENS[3], 0.05))
    for _ in range(flowers):
        fx, fy = cx + p.rng.normal(0, 0.14 * scale), top - 0.12 * scale + p.rng.normal(0, 0.1 * scale)
        radius = p.rng.uniform(0.04, 0.08) * scale
        petals = int(p.rng.integers(5, 9))
        dx, dy = p.x - fx, p.y - fy
        theta = np.arctan2(dy, dx) + p.rng.uniform(0, np.pi)
        outline = radius * (0.55 + 0.45 * np.abs(np.cos(petals * theta / 2)))
        color = p.pick(FLOWERS, 0.06)
        p.fill(np.hypot(dx, dy) - outline, p.lit(color, fx - radius * 0.3, fy - radius * 0.3, radius * 2.5, 0.6, 1.15))
        p.fill(p.ellipse(fx, fy, radius * 0.25, radius * 0.25), p.pick(((0.95, 0.8, 0.2), (0.25, 0.15, 0.05))))


def _flower_painting(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = p.rng.uniform(0, np.pi), 1.0, 0.022
    p.aged = p.chance(0.3)
    if p.chance(0.6):
        p.canvas[:] = p.lit(p.pick(DARK_GROUNDS, 0.04), 0.5, 0.35, 0.9, 0.7, 1.5)
    else:
        p.canvas[:] = p.vertical(p.jitter((0.85, 0.82, 0.72)), p.jitter((0.65, 0.6, 0.5)))
    table = p.rng.uniform(0.8, 0.95)
    if p.chance(0.4):  # A table edge borrows from still lifes.
        p.fill(table - p.y, p.jitter((0.35, 0.22, 0.12)))
    _bouquet(p, 0.5 + p.rng.normal(0, 0.05), table, int(p.rng.integers(6, 16)), p.rng.uniform(1.3, 1.8))
    if p.chance(0.25):
        fx = p.rng.uniform(0.15, 0.85)
        p.fill(p.ellipse(fx, table + 0.01, 0.05, 0.045), p.lit(p.pick(FRUIT), fx - 0.02, table - 0.02, 0.12))


def _abstract(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = p.rng.uniform(0, np.pi), 1.5, 0.03
    style = str(p.rng.choice(["fields", "strokes", "geometric", "circles", "horizon"], p=[0.3, 0.25, 0.15, 0.18, 0.12]))
    p.canvas[:] = p.pick(BOLD + ((0.85, 0.8, 0.7),), 0.08)
    if style == "horizon":  # Sky and earth as two loose colour fields, close to a landscape.
        horizon = p.rng.uniform(0.4, 0.65)
        p.canvas[:] = p.vertical(p.jitter(SKIES[str(p.rng.choice(list(SKIES)))][1], 0.12), p.pick(BOLD, 0.1), 0, horizon)
        p.fill(p.below(horizon, 0.02, waves=1), p.pick(GREENS + BOLD[:2], 0.12))
    if style == "fields":  # Soft colour fields; stacked bands can look like a horizon.
        top = p.rng.uniform(0.03, 0.1)
        for _ in range(int(p.rng.integers(2, 4))):
            height = p.rng.uniform(0.2, 0.45)
            p.fill(p.rect(0.08, top, 0.92, top + height), p.pick(BOLD, 0.1), alpha=0.9, edge=0.02)
            top += height + p.rng.uniform(0.02, 0.06)
    elif style == "geometric":
        cuts_x = np.sort(p.rng.uniform(0.1, 0.9, int(p.rng.integers(1, 4))))
        cuts_y = np.sort(p.rng.uniform(0.1, 0.9, int(p.rng.integers(1, 4))))
        p.canvas[:] = p.jitter((0.93, 0.92, 0.88), 0.03)
        for _ in range(int(p.rng.integers(1, 4))):
            i, j = p.rng.integers(len(cuts_x) + 1), p.rng.integers(len(cuts_y) + 1)
            x_edges, y_edges = np.concatenate(([0], cuts_x, [1])), np.concatenate(([0], cuts_y, [1]))
            p.fill(p.rect(x_edges[i], y_edges[j], x_edges[i + 1], y_edges[j + 1]), p.pick(BOLD[:3], 0.05))
        for cut in cuts_x:
            p.fill(np.abs(p.x - cut) - 0.012, (0.05, 0.05, 0.05))
        for cut in cuts_y:
            p.fill(np.abs(p.y - cut) - 0.012, (0.05, 0.05, 0.05))
    elif style == "circles":
        for _ in range(int(p.rng.integers(3, 9))):
            cx, cy, radius = p.rng.uniform(0.1, 0.9), p.rng.uniform(0.1, 0.9), p.rng.uniform(0.03, 0.2)
            shape = p.ellipse(cx, cy, radius, radius)
            p.fill(np.abs(shape) - 0.01 if p.chance(0.3) else shape, p.pick(BOLD, 0.08), alpha=0.9)
    strokes = int(p.rng.integers(3, 18)) if style in ("strokes", "circles") else int(p.rng.integers(0, 5))
    for _ in range(strokes):
        ax, ay = p.rng.uniform(-0.1, 1.1, 2)
        length, angle = p.rng.uniform(0.15, 0.7), p.rng.uniform(0, np.pi)
        p.fill(p.capsule(ax, ay, ax + length * np.cos(angle), ay + length * np.sin(angle), p.rng.uniform(0.015, 0.09)),
               p.pick(BOLD, 0.1), alpha=p.rng.uniform(0.6, 1.0))
    if p.chance(0.1):  # An oval figure-like form borrows from portraits.
        p.fill(p.ellipse(0.5, 0.42, 0.14, 0.2), p.pick(SKIN, 0.1), alpha=0.8)


def _religious_painting(p: _Painter) -> None:
    p.stroke_angle, p.stroke_variation, p.stroke_length = np.pi / 2, 0.7, 0.025
    p.aged = p.chance(0.7)
    gold_ground = p.chance(0.65)
    if gold_ground:
        p.canvas[:] = p.jitter(GOLD, 0.04) * (1 + 0.06 * p.smooth_noise(8))[..., None]
    else:
        p.canvas[:] = p.lit(p.pick(DARK_GROUNDS + ((0.12, 0.15, 0.35),), 0.04), 0.5, 0.2, 1.0, 0.7, 1.6)
        if p.chance(0.35):  # A landscape behind the figures.
            p.fill(p.below(0.55, 0.05), p.vertical(p.pick(GREENS), p.jitter((0.3, 0.28, 0.2)), 0.5, 1.0))
    if p.chance(0.25):  # A devotional bust: a portrait with a halo.
        _bust(p, halo=p.chance(0.9))
        return
    figures = int(p.rng.choice((1, 1, 2, 3)))
    centres = np.linspace(0.5, 0.5, 1) if figures == 1 else np.linspace(0.25, 0.75, figures)
    scale = p.rng.uniform(0.7, 1.0) if figures == 1 else p.rng.uniform(0.5, 0.7)
    for cx in centres + p.rng.normal(0, 0.03, len(centres)):
        head_y = p.rng.uniform(0.25, 0.38)
        robe = p.pick(((0.15, 0.22, 0.55), (0.6, 0.1, 0.1), (0.2, 0.35, 0.25), (0.35, 0.15, 0.35)), 0.05)
        p.fill(p.polygon([(cx - 0.05 * scale, head_y + 0.12 * scale), (cx + 0.05 * scale, head_y + 0.12 * scale),
                          (cx + 0.3 * scale, 1.02), (cx - 0.3 * scale, 1.02)]), p.lit(robe, cx - 0.1, head_y + 0.2, 0.7, 0.55, 1.2))
        p.fill(p.ellipse(cx, head_y + 0.1 * scale, 0.12 * scale, 0.08 * scale), robe * 0.8)
        _face(p, cx, head_y, scale * 0.55, halo=p.chance(0.85))
        if figures == 1 and p.chance(0.4):  # A child on the lap.
            _face(p, cx + 0.08 * scale, head_y + 0.3 * scale, scale * 0.3, halo=p.chance(0.8))
    if p.chance(0.4):  # A pointed arch frame.
        spring = 0.72
        arch = np.maximum(np.hypot(p.x - 0.1, p.y - spring) - 0.8, np.hypot(p.x - 0.9, p.y - spring) - 0.8)
        inside = np.minimum(p.rect(0.1, spring, 0.9, 1.2), arch)
        p.fill(-inside, p.pick(((0.3, 0.18, 0.08), (0.6, 0.45, 0.2), (0.15, 0.1, 0.08))))


_PAINTERS = {
    "abstract": _abstract,
    "cityscape": _cityscape,
    "flower painting": _flower_painting,
    "landscape": _landscape,
    "marina": _marina,
    "portrait": _portrait,
    "religious painting": _religious_painting,
    "still life": _still_life,
}
