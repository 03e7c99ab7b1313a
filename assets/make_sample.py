"""Draw assets/sample.png, the README's example input: a stylised landscape at dusk (original, made with Pillow).

Run: .venv/bin/python assets/make_sample.py
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 427
OUT = Path(__file__).with_name("sample.png")
MAX_BYTES = 150 * 1024

RGB = tuple[int, int, int]


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend of two colours."""
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def sky(img: Image.Image, horizon: int) -> None:
    """Vertical dusk gradient: deep blue above, warm peach at the horizon."""
    draw = ImageDraw.Draw(img)
    top, middle, bottom = (38, 52, 110), (196, 120, 150), (255, 196, 140)
    for y in range(horizon):
        t = y / horizon
        colour = mix(top, middle, t / 0.6) if t < 0.6 else mix(middle, bottom, (t - 0.6) / 0.4)
        draw.line([(0, y), (WIDTH, y)], fill=colour)


def sun(img: Image.Image, centre: tuple[int, int], radius: int) -> None:
    """A sun with a soft glow."""
    glow = Image.new("L", img.size, 0)
    ImageDraw.Draw(glow).ellipse(
        (centre[0] - radius * 3, centre[1] - radius * 3, centre[0] + radius * 3, centre[1] + radius * 3), fill=120
    )
    glow = glow.filter(ImageFilter.GaussianBlur(radius * 1.2))
    img.paste(Image.new("RGB", img.size, (255, 225, 170)), (0, 0), glow)
    ImageDraw.Draw(img).ellipse(
        (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius), fill=(255, 240, 200)
    )


def ridge(base: float, amplitude: float, waves: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    """A hill outline as a polygon closed along the bottom edge."""
    points = [(0.0, float(HEIGHT))]
    for x in range(0, WIDTH + 1, 4):
        y = base + sum(amplitude * weight * math.sin(x / WIDTH * math.tau * freq + freq) for freq, weight in waves)
        points.append((float(x), y))
    points.append((float(WIDTH), float(HEIGHT)))
    return points


def hills(img: Image.Image) -> None:
    """Four layers of hills, paler with distance (aerial perspective)."""
    draw = ImageDraw.Draw(img)
    layers = (
        (250, 22, ((1.3, 1.0), (3.1, 0.4)), (150, 112, 150)),
        (285, 26, ((0.9, 1.0), (2.3, 0.5)), (104, 86, 128)),
        (325, 20, ((1.7, 0.8), (4.0, 0.3)), (64, 70, 100)),
        (370, 16, ((1.1, 1.0), (5.2, 0.25)), (36, 46, 70)),
    )
    for base, amplitude, waves, colour in layers:
        draw.polygon(ridge(base, amplitude, waves), fill=colour)


def trees(img: Image.Image, rng: random.Random) -> None:
    """A row of simple pine silhouettes on the nearest hill."""
    draw = ImageDraw.Draw(img)
    for _ in range(26):
        x = rng.uniform(0, WIDTH)
        ground = 370 + 16 * (math.sin(x / WIDTH * math.tau * 1.1 + 1.1) + 0.25 * math.sin(x / WIDTH * math.tau * 5.2))
        height = rng.uniform(18, 40)
        half = height * 0.28
        draw.polygon([(x, ground - height), (x - half, ground + 2), (x + half, ground + 2)], fill=(24, 32, 50))


def birds(img: Image.Image) -> None:
    """Three small birds as two-stroke arcs."""
    draw = ImageDraw.Draw(img)
    for x, y, s in ((180, 110, 9), (205, 98, 7), (228, 120, 6)):
        draw.arc((x - s, y - s / 2, x, y + s / 2), 200, 340, fill=(60, 50, 80), width=2)
        draw.arc((x, y - s / 2, x + s, y + s / 2), 200, 340, fill=(60, 50, 80), width=2)


def main() -> None:
    """Render and save the picture, checking the size budget."""
    img = Image.new("RGB", (WIDTH, HEIGHT))
    sky(img, 300)
    sun(img, (430, 215), 34)
    hills(img)
    trees(img, random.Random(7))  # noqa: S311 -- a fixed seed, so the file is identical on every run
    birds(img)
    # A 256-colour palette keeps the PNG small; dithering hides banding in the sky gradient.
    small = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    small.save(OUT, optimize=True)
    size = OUT.stat().st_size
    if size >= MAX_BYTES:
        raise SystemExit(f"{OUT.name} is {size} bytes, over the {MAX_BYTES}-byte budget")
    print(f"wrote {OUT} ({WIDTH}x{HEIGHT}, {size} bytes)")


if __name__ == "__main__":
    main()
