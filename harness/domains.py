"""`python -m harness.domains make-digits OUT`: real digit domains made offline by the project, for shifts.domains.

The default study fine-tunes on sklearn's 8x8 digits: handwriting (43 writers, UCI optdigits) scanned to 32x32 bitmaps
and reduced to 8x8 by counting the ink of each 4x4 block (0..16). The domains written here are the same digits typed
instead of handwritten: glyphs of PIL's built-in font (ImageFont.load_default(size=...), the FreeType font Pillow
ships; no download) at a random size, rotation, stroke width and position, tinted as the study's digits are (a bright
colour on a dark one). Two renderings, as two real domains would differ:
  typed      the glyph at 32x32: another writer (a font) and another resolution (sharp, not 8x8 blocks)
  typed8x8   the glyph reduced to 8x8 as optdigits was (ink per 4x4 block of a 32x32 bitmap): another writer only
Written as OUT/<domain>/<class>/<index>.png, the layout of DomainBed and WILDS (shifts.domains reads it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DOMAINS = ("typed", "typed8x8")
CANVAS = 64  # the glyph is drawn at 2x and reduced: anti-aliased edges, as a scan's


def _glyph(digit: int, rng: np.random.Generator, font_cache: dict) -> np.ndarray:
    """One typed digit as ink in [0, 1], 32x32: font size 50-72 px on the 64-px canvas (the digit fills ~55-80% of the
    height, as optdigits' normalised bitmaps do), rotated by up to 15 degrees, stroke 0-3 px, offset by up to 4 px."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(50, 73))
    if size not in font_cache:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType has one bitmap size only
            raise RuntimeError("Pillow was built without FreeType: ImageFont.load_default(size=...) has no sizes")
        font_cache[size] = font
    font, stroke = font_cache[size], int(rng.integers(0, 4))
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    dx, dy = rng.integers(-4, 5, size=2) * 2
    draw.text((CANVAS / 2 + dx, CANVAS / 2 + dy), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke,
              stroke_fill=255)
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    return np.asarray(img.resize((32, 32), Image.BOX), dtype=np.float64) / 255


def _optdigits(ink: np.ndarray) -> np.ndarray:
    """A 32x32 ink image reduced as UCI optdigits was: thresholded to a bitmap, the on-pixels of each 4x4 block
    counted (0..16), divided by 16 as harness.data.digits reads them."""
    bitmap = ink > 0.3  # thin strokes (stroke 0) survive: at 0.5 a 1-px line often vanishes
    return bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3)) / 16.0


def _tinted(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink -> uint8 RGB, bright foreground on a dark background drawn as harness.data._digits draws them."""
    fg, bg = 0.55 + 0.45 * rng.random(3), 0.25 * rng.random(3)
    rgb = bg + (fg - bg) * ink[..., None]
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def make_digits(out: Path, classes: list[int], per_class: int, seed: int) -> dict:
    """Write every domain of DOMAINS under out; returns {domain: images written}. One generator per domain, so a
    domain's images do not depend on the others'."""
    from PIL import Image

    counts = {}
    for d, domain in enumerate(DOMAINS):
        rng, fonts = np.random.default_rng([seed, d]), {}
        for digit in classes:
            folder = out / domain / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                ink = _glyph(digit, rng, fonts)
                if domain == "typed8x8":
                    ink = _optdigits(ink)
                Image.fromarray(_tinted(ink, rng), "RGB").save(folder / f"{i:04d}.png")
        counts[domain] = len(classes) * per_class
    return counts


def main(argv=None) -> int:
    about = __doc__.split("\n\n")[0].split(": ", 1)[1]
    ap = argparse.ArgumentParser(prog="python -m harness.domains", description=about)
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-digits", help="write typed-digit domains (typed, typed8x8) as OUT/<domain>/<class>/*.png")
    mk.add_argument("out", help="folder to create (must not exist, or be empty)")
    mk.add_argument("--classes", type=int, nargs="+", default=[5, 6, 7, 8, 9],
                    help="digits, one class folder each: the study's data.target_classes, in its order (default 5-9, "
                    "the default study's)")
    mk.add_argument("--per-class", type=int, default=100, help="images per class and domain (default 100)")
    mk.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: out: {out} exists and is not an empty folder; give a new folder", file=sys.stderr)
        return 2
    if not args.classes or len(set(args.classes)) != len(args.classes) or not all(0 <= c <= 9 for c in args.classes):
        print(f"error: --classes: needs distinct digits in 0..9, got {args.classes}", file=sys.stderr)
        return 2
    if sorted(map(str, args.classes)) != list(map(str, args.classes)):
        print(f"error: --classes: the class folders' sorted order is the labels' order; give the digits sorted, got "
              f"{args.classes}", file=sys.stderr)
        return 2
    if not 1 <= args.per_class <= 100_000 or not 0 <= args.seed < 2**32:
        print("error: --per-class: must be in 1..100000 (and --seed in 0..2^32-1)", file=sys.stderr)
        return 2
    counts = make_digits(out, args.classes, args.per_class, args.seed)
    print(f"wrote {', '.join(f'{d}: {n} images' for d, n in counts.items())} under {out} "
          f"({len(args.classes)} classes, {args.per_class} a class)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
