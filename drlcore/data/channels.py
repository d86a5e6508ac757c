"""Fluorescence channels: their names, their display colours, and the composite the network sees.

A multi-channel image (2 to 8 channels, see :mod:`drlcore.data.decode`) is scaled channel by channel
to [0, 1] with one dataset-wide range per channel, then shown to the backbone (and in thumbnails)
as ONE documented RGB composite:

    composite = clip( sum_k  channel_k * colour_k , 0, 1 )  ->  8-bit RGB (x 255, rounded)

that is, each channel tints its own colour and the tints add up (as in a fluorescence viewer),
clipped where they saturate. Default colours, chosen to stay distinguishable for the common
red-green colour blindnesses (no red/green pair is ever the only contrast):

- 2 channels: green, magenta
- 3 or more: blue (typically DNA), green, magenta, grey, cyan, yellow, orange, red (in order)

``--channels`` overrides them: a comma-separated list, each item ``colour`` (k-th item -> k-th
channel), ``NAME=colour`` (channel called NAME: a channel group's name, see
:mod:`drlcore.data.discover`; for a stack, names are given in channel order) or ``INDEX=colour``
(0-based). Colours are names from :data:`COLOURS` or ``#rrggbb``; ``off`` hides a channel from
the composite (it is still measured by morphology).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from drlcore.errors import DrlError

__all__ = ["COLOURS", "ChannelMap", "default_colours", "parse_channels", "channel_map",
           "composite", "MAX_CHANNELS"]

MAX_CHANNELS = 8

COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.0, 1.0),
    "green": (0.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "grey": (1.0, 1.0, 1.0),
    "gray": (1.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "red": (1.0, 0.0, 0.0),
    "off": (0.0, 0.0, 0.0),
}
_ORDER = ("blue", "green", "magenta", "grey", "cyan", "yellow", "orange", "red")


def default_colours(n: int) -> list[str]:
    """The default colour names for ``n`` channels (see module docstring)."""
    if not 1 <= n <= MAX_CHANNELS:
        raise DrlError(f"{n} channels: between 1 and {MAX_CHANNELS} are supported")
    if n == 1:
        return ["grey"]
    if n == 2:
        return ["green", "magenta"]
    return list(_ORDER[:n])


def _rgb_of(colour: str) -> tuple[float, float, float]:
    colour = colour.strip().lower()
    if colour in COLOURS:
        return COLOURS[colour]
    if re.fullmatch(r"#[0-9a-f]{6}", colour):
        return tuple(int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore
    raise DrlError(f"unknown channel colour {colour!r}: use one of "
                   f"{', '.join(sorted(COLOURS))} or #rrggbb")


def parse_channels(spec: str | None) -> list[tuple[str | None, str]]:
    """``"DNA=blue,actin=green"`` -> [("DNA", "blue"), ("actin", "green")]; ``"blue,green"`` ->
    [(None, "blue"), (None, "green")]. Raises DrlError on a malformed spec."""
    if spec is None or not str(spec).strip():
        return []
    items = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            raise DrlError(f"--channels {spec!r}: empty item")
        name, sep, colour = part.rpartition("=")
        name = name.strip() if sep else None
        if sep and not name:
            raise DrlError(f"--channels {spec!r}: item {part!r} has no channel name before '='")
        _rgb_of(colour)
        items.append((name, colour.strip().lower()))
    if len(items) > MAX_CHANNELS:
        raise DrlError(f"--channels {spec!r}: at most {MAX_CHANNELS} channels")
    names = [n for n, _ in items if n is not None]
    if len(set(names)) != len(names):
        raise DrlError(f"--channels {spec!r}: a channel is named twice")
    return items


@dataclass(frozen=True)
class ChannelMap:
    names: tuple[str, ...]
    colours: tuple[str, ...]

    @property
    def rgb(self) -> np.ndarray:
        """(C, 3) float32 colour matrix."""
        return np.array([_rgb_of(c) for c in self.colours], np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colours": list(self.colours)}


def channel_map(n: int, names: list[str] | None = None, spec: str | None = None) -> ChannelMap:
    """Names and colours of ``n`` channels: ``names`` (from a channel group) or ``ch0..``;
    colours from the defaults, overridden by the ``--channels`` spec."""
    given = names is not None
    names = list(names) if given else [f"ch{k}" for k in range(n)]
    if len(names) != n:
        raise DrlError(f"{len(names)} channel names for {n} channels")
    colours = default_colours(n)
    items = parse_channels(spec)
    if not given and any(nm is not None and not nm.isdigit() for nm, _ in items):
        # A stack's channels have no names of their own: the spec names them, in order.
        if len(items) > n:
            raise DrlError(f"--channels names {len(items)} channels; the images have {n}")
        for k, (nm, colour) in enumerate(items):
            if nm is not None and nm.isdigit():
                raise DrlError(f"--channels {spec!r}: mix of names and indexes")
            names[k] = nm if nm is not None else names[k]
            colours[k] = colour
        return ChannelMap(tuple(names), tuple(colours))
    for k, (nm, colour) in enumerate(items):
        if nm is None:
            if k >= n:
                raise DrlError(f"--channels gives {len(items)} colours; the images have {n} "
                               "channels")
            colours[k] = colour
        elif nm.isdigit():
            if int(nm) >= n:
                raise DrlError(f"--channels: channel index {nm} but the images have {n} channels")
            colours[int(nm)] = colour
        elif nm in names:
            colours[names.index(nm)] = colour
        else:
            raise DrlError(f"--channels: no channel called {nm!r} (channels: {', '.join(names)})")
    return ChannelMap(tuple(names), tuple(colours))


def composite(channels01: np.ndarray, cmap: ChannelMap) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, 3) uint8 additive composite (module docstring)."""
    if channels01.ndim != 3 or channels01.shape[2] != len(cmap.colours):
        raise DrlError(f"composite: {channels01.shape} pixels for {len(cmap.colours)} colours")
    mixed = np.tensordot(channels01.astype(np.float32), cmap.rgb, axes=([2], [0]))
    return (np.clip(mixed, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
