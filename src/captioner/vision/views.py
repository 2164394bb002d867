"""The eight symmetries of a square picture (flips and quarter turns): augmentation views for
pictures that have no up or left, such as aerial photos. Not for captions that say "left of".

``captioner extract --views hflip,rot90`` caches the training images' features under each view
(``FEATURES/train@hflip``...), and ``train --set views=[hflip,rot90]`` draws, per caption and
epoch, the plain features or one view's: augmentation at the cost of one extraction per view.
"""

from __future__ import annotations

from PIL import Image

from captioner.errors import CaptionerError

VIEWS: dict[str, Image.Transpose] = {
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT,
    "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rot90": Image.Transpose.ROTATE_90,
    "rot180": Image.Transpose.ROTATE_180,
    "rot270": Image.Transpose.ROTATE_270,
    "transpose": Image.Transpose.TRANSPOSE,
    "transverse": Image.Transpose.TRANSVERSE,
}
DIHEDRAL = tuple(VIEWS)  # all seven views besides the picture itself


def parse_views(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"hflip,rot90"`` or ``"dihedral"`` (all seven) -> view names, checked."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if names == ["dihedral"]:
        return list(DIHEDRAL)
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise CaptionerError(
            f"unknown view(s) {', '.join(unknown)}; known: {', '.join(VIEWS)} or dihedral"
        )
    if len(set(names)) != len(names):
        raise CaptionerError(f"a view is named twice in {', '.join(names)}")
    return names


def view_folder(split: str, view: str) -> str:
    """The cache folder name of ``split`` under ``view`` (``train@rot90``)."""
    return f"{split}@{view}"


class ViewTransform:
    """A picture -> the same picture flipped or turned (picklable for DataLoader workers)."""

    def __init__(self, view: str, then: object | None = None) -> None:
        if view not in VIEWS:
            raise CaptionerError(f"unknown view {view!r}")
        self.view = view
        self.before = then  # e.g. a denoiser, applied first

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.before is not None:
            image = self.before(image)  # type: ignore[operator]
        return image.transpose(VIEWS[self.view])
