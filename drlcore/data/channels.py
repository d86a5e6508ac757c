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
the composite (it is still measured by morphology). An item that is neither a colour nor
``NAME=colour`` is a channel NAME keeping its default colour: ``--channels BrightField,DNA,DarkField``
names a stack's channels in order (and renames a file's channels in order when the names do not
match the ones it carries).

Channel roles
-------------
Morphology (:mod:`drlcore.analysis.morphology`) reads what a channel *is* from its name (OME-XML
``Channel Name``, the token of a one-file-per-channel layout, or ``--channels``):
:func:`is_dna_channel` recognises DNA / nuclear stains (DAPI, Hoechst, DRAQ5/7, DNA, PI, SYTO,
TO-PRO, 7-AAD, nuclear, ...), :func:`channel_role` adds bright field and dark field (scatter).
The DNA channel gives the nucleus mask and the DNA-content measurements; bright field, when present,
gives the object mask (:func:`mask_channel_index`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drlcore.errors import DrlError

__all__ = ["COLOURS", "ChannelMap", "default_colours", "parse_channels", "channel_map",
           "composite", "MAX_CHANNELS", "is_dna_channel", "channel_role", "channel_roles",
           "mask_channel_index", "ome_channel_names", "ROLES"]

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


def _is_colour(colour: str) -> bool:
    colour = colour.strip().lower()
    return colour in COLOURS or re.fullmatch(r"#[0-9a-f]{6}", colour) is not None


def parse_channels(spec: str | None) -> list[tuple[str | None, str | None]]:
    """``"DNA=blue,actin=green"`` -> [("DNA", "blue"), ("actin", "green")]; ``"blue,green"`` ->
    [(None, "blue"), (None, "green")]; ``"BrightField,DNA"`` -> [("BrightField", None), ("DNA",
    None)] (names, default colours). Raises DrlError on a malformed spec."""
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
        if not sep and not _is_colour(colour):
            if re.fullmatch(r"#.*", colour.strip()) or colour.strip().isdigit():
                _rgb_of(colour)  # a malformed colour or a bare index: say which colours exist
            items.append((colour.strip(), None))  # a bare channel name, default colour
            continue
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

    @property
    def roles(self) -> tuple[str, ...]:
        """What each channel is, by its name (:func:`channel_role`)."""
        return tuple(channel_role(n) for n in self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colours": list(self.colours)}


def channel_map(n: int, names: list[str] | None = None, spec: str | None = None) -> ChannelMap:
    """Names and colours of ``n`` channels: ``names`` (from a channel group or the OME-XML) or
    ``ch0..``; colours from the defaults, overridden by the ``--channels`` spec."""
    given = names is not None
    names = list(names) if given else [f"ch{k}" for k in range(n)]
    if len(names) != n:
        raise DrlError(f"{len(names)} channel names for {n} channels")
    colours = default_colours(n)
    items = parse_channels(spec)
    bare = [nm for nm, colour in items if colour is None]
    if given and bare and len(bare) == len(items) and not set(bare) <= set(names):
        # A list of names only, not the file's own: it renames the channels in order.
        if len(items) != n:
            raise DrlError(f"--channels names {len(items)} channels; the images have {n} "
                           f"({', '.join(names)})")
        given = False
        names = [f"ch{k}" for k in range(n)]
    if not given and any(nm is not None and not nm.isdigit() for nm, _ in items):
        # A stack's channels have no names of their own: the spec names them, in order.
        if len(items) > n:
            raise DrlError(f"--channels names {len(items)} channels; the images have {n}")
        for k, (nm, colour) in enumerate(items):
            if nm is not None and nm.isdigit():
                raise DrlError(f"--channels {spec!r}: mix of names and indexes")
            names[k] = nm if nm is not None else names[k]
            colours[k] = colour or colours[k]
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
            colours[int(nm)] = colour or colours[int(nm)]
        elif nm in names:
            colours[names.index(nm)] = colour or colours[names.index(nm)]
        else:
            raise DrlError(f"--channels: no channel called {nm!r} (channels: {', '.join(names)})")
    return ChannelMap(tuple(names), tuple(colours))


def composite(channels01: np.ndarray, cmap: ChannelMap) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, 3) uint8 additive composite (module docstring)."""
    if channels01.ndim != 3 or channels01.shape[2] != len(cmap.colours):
        raise DrlError(f"composite: {channels01.shape} pixels for {len(cmap.colours)} colours")
    mixed = np.tensordot(channels01.astype(np.float32), cmap.rgb, axes=([2], [0]))
    return (np.clip(mixed, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------

ROLES = ("dna", "brightfield", "darkfield", "fluorescence")

# Whole tokens of a channel name (split at anything not a letter or digit) that mean a DNA or
# nuclear stain. Short ones ("pi", "dna") only count as whole tokens: "pixel" is not PI.
_DNA_TOKENS = {"dna", "pi", "nuclear", "nucleus", "nuclei", "nuc", "dapi", "hoechst", "draq5",
               "draq7", "drq5", "syto", "sytox", "topro", "topro3", "7aad", "aad", "h2b",
               "propidium", "iodide", "vybrant", "dyecycle", "fxcycle", "redot", "nucspot",
               "nucblue", "nucred", "spydna", "sirdna", "hoechst33342", "hoechst33258"}
# Prefixes that mark a DNA stain wherever they start a token (DAPI405, Hoechst33342, DRAQ5...).
_DNA_PREFIXES = ("dapi", "hoechst", "draq", "sytox", "topro", "nucblue", "nucspot", "sirdna",
                 "spy650dna", "spy555dna", "propidium")
# Long, unambiguous stain names, recognised inside a token too (w1DAPI, C2-Hoechst33342).
_DNA_ANYWHERE = ("dapi", "hoechst", "draq5", "draq7", "sytox", "topro", "propidium", "sirdna")
_BRIGHTFIELD = {"brightfield", "bf", "bright", "phase", "phasecontrast", "dic", "transmitted",
                "trans", "tl", "tpmt"}
_DARKFIELD = {"darkfield", "df", "ssc", "scatter", "sidescatter", "dark"}


def _tokens(name: str) -> list[str]:
    text = str(name).lower().replace("-", "")  # TO-PRO-3, 7-AAD, SYTO-16 read as one token
    return [t for t in re.split(r"[^a-z0-9]+", text) if t]


def is_dna_channel(name: str | None) -> bool:
    """Whether a channel name says it holds a DNA / nuclear stain (DAPI, Hoechst 33342, DRAQ5,
    DNA, PI, SYTOX, TO-PRO-3, 7-AAD, "nuclear", "Nuclei", ...). Case and separators are ignored;
    short names (PI, DNA) must be a whole word of the name."""
    if not name:
        return False
    tokens = _tokens(name)
    joined = "".join(tokens)
    return (any(t in _DNA_TOKENS or t.startswith(_DNA_PREFIXES) for t in tokens)
            or joined in _DNA_TOKENS or any(p in joined for p in _DNA_ANYWHERE))


def channel_role(name: str | None) -> str:
    """``dna``, ``brightfield``, ``darkfield`` or ``fluorescence`` (anything else) by name."""
    if is_dna_channel(name):
        return "dna"
    tokens = _tokens(name or "")
    joined = "".join(tokens)
    if joined in _BRIGHTFIELD or any(t in _BRIGHTFIELD for t in tokens) or "brightfield" in joined:
        return "brightfield"
    if joined in _DARKFIELD or any(t in _DARKFIELD for t in tokens) or "darkfield" in joined:
        return "darkfield"
    return "fluorescence"


def channel_roles(names: Sequence[str]) -> list[str]:
    return [channel_role(n) for n in names]


def mask_channel_index(names: Sequence[str], choice: str | int | None = None) -> int | None:
    """The channel ``--mask-channel`` names: a channel name (case-insensitive) or a 0-based
    index. ``None`` (the default): the bright-field channel where there is one, else None, and
    morphology picks the brightest structural channel of each image itself. Raises DrlError for a
    choice that names no channel."""
    names = list(names)
    if choice is None or (isinstance(choice, str) and not choice.strip()):
        for k, role in enumerate(channel_roles(names)):
            if role == "brightfield":
                return k
        return None
    text = str(choice).strip()
    if text.isdigit():
        if int(text) >= len(names):
            raise DrlError(f"--mask-channel {text}: the images have channels 0 to "
                           f"{len(names) - 1} ({', '.join(names)})")
        return int(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise DrlError(f"--mask-channel {text!r}: no such channel (channels: {', '.join(names)}; "
                   "or give a 0-based index)")


def ome_channel_names(xml: str | None) -> list[str] | None:
    """The ``Name`` of each ``Channel`` of the first image of an OME-XML document, None when the
    document is missing, unreadable or leaves a channel unnamed."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for image in root.iter():
        if image.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        names = [ch.get("Name") for ch in image if ch.tag.rsplit("}", 1)[-1] == "Channel"]
        if names and all(n and n.strip() for n in names):
            return [n.strip() for n in names]
        return None
    return None
