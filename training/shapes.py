"""The synthetic world `shapes-64` is trained on, and the detector that
checks its pictures.

One module, numpy and Pillow only (no torch), because two sides use it:
the training script renders its dataset with it, and the semantic test
(tests/semantic/test_shapes_model.py) scores the server's pictures with a
detector whose shape templates come from this same renderer, never from
the model's outputs.

A scene is one or two shapes of one colour on a plain background, at one
of five positions, in one of three sizes. Its caption says some or all of
that, in one of several phrasings.
"""

import math
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: antialiased edges

COLOURS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 40),
    "green": (40, 170, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (255, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "white": COLOURS["white"],
    "black": COLOURS["black"],
    "gray": (128, 128, 128),
    "blue": COLOURS["blue"],
    "yellow": COLOURS["yellow"],
    "green": COLOURS["green"],
}
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "star": "stars", "ring": "rings", "cross": "crosses"}
POSITIONS = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "centre": (32, 32)}
POSITION_WORDS = {
    "left": ["on the left", "at the left"],
    "right": ["on the right", "at the right"],
    "top": ["at the top"],
    "bottom": ["at the bottom"],
    "centre": ["in the centre", "in the center", "in the middle"],
}
SIZES = {"small": 7.0, "medium": 10.0, "large": 13.0}
SIZE_WORDS = {"small": ["small", "tiny"], "medium": [""], "large": ["large", "big"]}

# (colour, shape, background) triples never rendered for training, in any
# position, size, count or phrasing: the semantic test asks for these.
HELD_OUT_SEED = 7
HELD_OUT_COUNT = 36


def held_out_triples():
    rng = random.Random(HELD_OUT_SEED)
    triples = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS if c != b]
    rng.shuffle(triples)
    return sorted(triples[:HELD_OUT_COUNT])


def _polygon(kind, cx, cy, r):
    if kind == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        R = 1.15 * r
        return [(cx + R * math.sin(a), cy - R * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if kind == "star":
        outer, inner = 1.2 * r, 0.5 * r
        pts = []
        for i in range(10):
            a = i * math.pi / 5
            rad = outer if i % 2 == 0 else inner
            pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
        return pts
    if kind == "cross":
        a, w = r, 0.34 * r
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    raise ValueError(kind)


def _draw_shape(draw, kind, cx, cy, r, colour, background):
    s = SUPERSAMPLE
    cx, cy, r = cx * s, cy * s, r * s
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        h = 0.55 * r
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=background)
    else:
        draw.polygon(_polygon(kind, cx, cy, r), fill=colour)


def centres(position, count, radius, jitter=(0.0, 0.0)):
    """Where the shapes of a scene go: two shapes sit side by side (stacked
    at the left and right, where there is no room across)."""
    ax, ay = POSITIONS[position]
    ax, ay = ax + jitter[0], ay + jitter[1]
    if count == 1:
        return [(ax, ay)]
    d = radius + 2.0
    if position in ("left", "right"):
        return [(ax, ay - d), (ax, ay + d)]
    return [(ax - d, ay), (ax + d, ay)]


def render(scene):
    """The RGB uint8 picture (SIZE x SIZE) of a scene dict."""
    background = BACKGROUNDS[scene["background"]]
    colour = COLOURS[scene["colour"]]
    big = Image.new("RGB", (SIZE * SUPERSAMPLE,) * 2, background)
    draw = ImageDraw.Draw(big)
    for cx, cy in centres(scene["position"], scene["count"], scene["radius"], scene.get("jitter", (0, 0))):
        _draw_shape(draw, scene["shape"], cx, cy, scene["radius"], colour, background)
    return np.asarray(big.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def random_scene(rng, excluded):
    while True:
        colour = rng.choice(list(COLOURS))
        shape = rng.choice(SHAPES)
        background = rng.choice(list(BACKGROUNDS))
        if colour != background and (colour, shape, background) not in excluded:
            break
    count = 2 if rng.random() < 0.2 else 1
    size = rng.choice(["small", "medium"]) if count == 2 else rng.choice(list(SIZES))
    radius = SIZES[size] * (0.7 if count == 2 else 1.0) + rng.uniform(-0.8, 0.8)
    return {"colour": colour, "shape": shape, "background": background, "position": rng.choice(list(POSITIONS)),
            "size": size, "count": count, "radius": radius, "jitter": (rng.uniform(-2, 2), rng.uniform(-2, 2))}


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def caption(scene, rng):
    """One of several phrasings; each part but the shape is left out now and
    then, so that partial prompts ("a red circle") mean something too."""
    size = rng.choice(SIZE_WORDS[scene["size"]])
    colour = scene["colour"] if rng.random() > 0.1 else ""
    noun = scene["shape"] if scene["count"] == 1 else PLURALS[scene["shape"]]
    words = " ".join(w for w in (size, colour, noun) if w)
    obj = f"{article(words)} {words}" if scene["count"] == 1 else f"two {words}"
    pos = rng.choice(POSITION_WORDS[scene["position"]]) if rng.random() > 0.15 else ""
    bg = scene["background"] if rng.random() > 0.15 else ""
    templates = [
        "{obj} {pos} on {bga} {bg} background",
        "{obj} on {bga} {bg} background {pos}",
        "{obj} {pos}, {bg} background",
        "{bga} {bg} background with {obj} {pos}",
    ]
    if not bg:
        text = f"{obj} {pos}"
    else:
        text = rng.choice(templates).format(obj=obj, pos=pos, bg=bg, bga=article(bg))
    return " ".join(text.replace(" ,", ",").split()).strip(" ,")


# ---- the detector -------------------------------------------------------

TEMPLATE_SIDE = 20


def _crop_resized(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255
    img = Image.fromarray(crop).resize((TEMPLATE_SIDE, TEMPLATE_SIDE), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _shape_mask(picture, background):
    diff = picture.astype(np.float32) - np.asarray(background, np.float32)
    return np.sqrt((diff ** 2).sum(-1)) > 70.0


def _components(mask):
    """4-connected components, largest first (as lists of (y, x))."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, comp = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(comp)
    return sorted(found, key=len, reverse=True)


class Detector:
    """Scores a picture: background and shape colour (nearest palette
    colour), position (nearest anchor of the shapes' centroid), count
    (components of a useful size) and shape class (nearest mean template,
    the templates rendered by `render`)."""

    def __init__(self):
        self.templates = {}
        for shape in SHAPES:
            acc = []
            for radius in np.linspace(6.0, 14.0, 9):
                scene = {"colour": "black", "shape": shape, "background": "white", "position": "centre",
                         "count": 1, "radius": float(radius)}
                acc.append(_crop_resized(_shape_mask(render(scene), BACKGROUNDS["white"])))
            self.templates[shape] = np.mean(acc, axis=0)

    @staticmethod
    def _nearest(rgb, palette):
        return min(palette, key=lambda k: sum((float(a) - b) ** 2 for a, b in zip(rgb, palette[k])))

    def detect(self, picture):
        picture = np.asarray(picture, dtype=np.uint8)[..., :3]
        border = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]])
        background_rgb = np.median(border, axis=0)
        mask = _shape_mask(picture, background_rgb)
        comps = [c for c in _components(mask) if len(c) >= 12]
        result = {"background": self._nearest(background_rgb, BACKGROUNDS), "count": len(comps),
                  "colour": None, "shape": None, "position": None}
        if not comps:
            return result
        pixels = [picture[y, x] for comp in comps for (y, x) in comp]
        result["colour"] = self._nearest(np.median(np.asarray(pixels), axis=0), COLOURS)
        ys = np.array([y for comp in comps for (y, _) in comp], np.float32)
        xs = np.array([x for comp in comps for (_, x) in comp], np.float32)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        result["position"] = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
        largest = np.zeros(mask.shape, dtype=bool)
        for y, x in comps[0]:
            largest[y, x] = True
        crop = _crop_resized(largest)
        result["shape"] = min(self.templates, key=lambda s: float(((self.templates[s] - crop) ** 2).sum()))
        return result
