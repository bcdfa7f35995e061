"""`Size`: the one order of a picture's or a map's size in onnxcam, (height, width), as numpy's shape says it.

OpenCV takes sizes as (width, height): each cv2 call converts where it is made, `(size.width, size.height)`.
Points and regions are (x, y) and (x0, y0, x1, y1), as in index.csv's columns.
"""

from __future__ import annotations

from typing import NamedTuple


class Size(NamedTuple):
    height: int
    width: int
