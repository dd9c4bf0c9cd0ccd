"""PNG previews of Phoebus ``.bob`` screens, for the docs (``mlioc generate opi --preview DIR``).

It reads the ``.bob`` file itself (not the generator's objects), so a preview shows exactly where
the file puts each widget: positions and sizes in display pixels, group offsets applied as Phoebus
does, the widgets' own colours and fonts. Live values cannot be shown; a PV widget shows which PV it
reads (``$(P)OUT:sigma_x``), LEDs show their first state and bars are drawn half full. Needs Pillow
(the ``docs`` extra); imported only when previews are asked for.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GROUP_INSET_TOP = 16  # Phoebus' group box draws its title above the children's area
GROUP_INSET_SIDE = 1
SCALE = 1


def _int(el: ET.Element, tag: str, default: int = 0) -> int:
    child = el.find(tag)
    return int(float(child.text)) if child is not None and child.text else default


def _str(el: ET.Element, tag: str, default: str = "") -> str:
    child = el.find(tag)
    return child.text or "" if child is not None else default


def _color(el: ET.Element, tag: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    c = el.find(f"{tag}/color")
    if c is None:
        return default
    return int(c.get("red", 0)), int(c.get("green", 0)), int(c.get("blue", 0))


def _font(el: ET.Element, default: float = 14.0) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    f = el.find("font/font")
    size = float(f.get("size", default)) if f is not None else default
    return ImageFont.load_default(size=size)


def _bool(el: ET.Element, tag: str, default: bool) -> bool:
    child = el.find(tag)
    return default if child is None or child.text is None else child.text.strip() == "true"


class Renderer:
    def __init__(self, root: ET.Element):
        self.root = root
        self.width = _int(root, "width", 800)
        self.height = _int(root, "height", 600)
        bg = _color(root, "background_color", (255, 255, 255))
        self.image = Image.new("RGB", (self.width, self.height), bg)
        self.draw = ImageDraw.Draw(self.image)

    def render(self) -> Image.Image:
        self._children(self.root, 0, 0)
        return self.image

    def _children(self, parent: ET.Element, ox: int, oy: int) -> None:
        for w in parent.findall("widget"):
            x, y = ox + _int(w, "x"), oy + _int(w, "y")
            width, height = _int(w, "width", 100), _int(w, "height", 20)
            getattr(self, "_" + w.get("type", "").replace("-", "_"), self._unknown)(w, x, y, width, height)

    def _text(self, text: str, box: tuple[int, int, int, int], font, fill=(0, 0, 0), align: int = 0,
              valign: int = 1) -> None:
        x0, y0, x1, y1 = box
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        while tw > x1 - x0 - 4 and len(text) > 1:  # clip like a widget does
            text = text[:-2] + "~"
            left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
            tw = right - left
        tx = x0 + 3 if align == 0 else (x0 + x1 - tw) // 2 if align == 1 else x1 - tw - 3
        ty = y0 + 2 if valign == 0 else (y0 + y1 - th) // 2 - top if valign == 1 else y1 - th - 2 - top
        self.draw.text((tx, ty), text, font=font, fill=fill)

    # ------------------------------------------------------------------ widgets

    def _label(self, w, x, y, width, height) -> None:
        if not _bool(w, "transparent", True):
            self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=_color(w, "background_color", (255,) * 3))
        self._text(_str(w, "text"), (x, y, x + width, y + height), _font(w), _color(w, "foreground_color", (0, 0, 0)),
                   _int(w, "horizontal_alignment", 0), _int(w, "vertical_alignment", 0))

    def _textupdate(self, w, x, y, width, height) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=(240, 240, 240), outline=(180, 180, 180))
        self._text(_str(w, "pv_name"), (x, y, x + width, y + height), ImageFont.load_default(size=11),
                   (0, 0, 160), _int(w, "horizontal_alignment", 0), 1)

    def _led_fill(self, w) -> tuple[int, int, int]:
        state = w.find("states/state")
        if state is not None:
            return _color(state, "color", (0, 255, 0))
        return _color(w, "on_color", (0, 255, 0))

    def _multi_state_led(self, w, x, y, width, height) -> None:
        self.draw.ellipse((x, y, x + width - 1, y + height - 1), fill=self._led_fill(w), outline=(50, 50, 50))

    _led = _multi_state_led

    def _button(self, x, y, width, height, text, font, fill=(210, 210, 210)) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=fill, outline=(120, 120, 120))
        self.draw.line((x + 1, y + height - 2, x + width - 2, y + height - 2), fill=(150, 150, 150))
        self._text(text, (x, y, x + width, y + height), font, (0, 0, 0), 1, 1)

    def _action_button(self, w, x, y, width, height) -> None:
        self._button(x, y, width, height, _str(w, "text") or _str(w, "actions/action/description"), _font(w),
                     _color(w, "background_color", (210, 210, 210)))

    def _bool_button(self, w, x, y, width, height) -> None:
        self._button(x, y, width, height, "", _font(w))
        led = min(height - 8, 16)
        self.draw.ellipse((x + 6, y + (height - led) // 2, x + 6 + led, y + (height + led) // 2),
                          fill=_color(w, "on_color", (0, 255, 0)), outline=(50, 50, 50))
        self._text(f"{_str(w, 'off_label', 'Off')} / {_str(w, 'on_label', 'On')}",
                   (x + led + 8, y, x + width, y + height), _font(w), (0, 0, 0), 1, 1)

    def _progressbar(self, w, x, y, width, height) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=(250, 250, 250), outline=(150, 150, 150))
        fill = _color(w, "fill_color", (60, 255, 60))
        self.draw.rectangle((x + 1, y + 1, x + width // 2, y + height - 2), fill=fill)

    def _group(self, w, x, y, width, height) -> None:
        style = _int(w, "style", 0)
        if style == 0:
            font = ImageFont.load_default(size=12)
            self.draw.rectangle((x, y + 7, x + width - 1, y + height - 1), outline=(120, 120, 120))
            name = _str(w, "name")
            bbox = self.draw.textbbox((0, 0), name, font=font)
            self.draw.rectangle((x + 8, y, x + 14 + bbox[2], y + 14), fill=(255, 255, 255))
            self.draw.text((x + 11, y), name, font=font, fill=(0, 0, 0))
            self._children(w, x + GROUP_INSET_SIDE, y + GROUP_INSET_TOP)
        else:
            self._children(w, x, y)

    def _rectangle(self, w, x, y, width, height) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=_color(w, "background_color", (30, 144, 255)),
                            outline=_color(w, "line_color", (0, 0, 255)))

    def _stripchart(self, w, x, y, width, height) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), fill=(255, 255, 255), outline=(120, 120, 120))
        title = _str(w, "title")
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=11)
        if title:
            self._text(title, (x, y + 2, x + width, y + 22), font, (0, 0, 0), 1, 1)
        axes = w.findall("y_axes/y_axis")
        left = x + 50 * max(1, len(axes))
        top, bottom, right = y + 26, y + height - 48, x + width - 10
        self.draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
        for i in range(1, 5):
            gy = top + (bottom - top) * i // 5
            self.draw.line((left, gy, right, gy), fill=(225, 225, 225))
        for i, axis in enumerate(axes):
            ax = left - 50 * i
            self.draw.line((ax, top, ax, bottom), fill=(0, 0, 0))
            self.draw.text((ax - 46, top), _str(axis, "maximum"), font=small, fill=(0, 0, 0))
            self.draw.text((ax - 46, bottom - 12), _str(axis, "minimum"), font=small, fill=(0, 0, 0))
            self.draw.text((ax - 46, (top + bottom) // 2), _str(axis, "title")[:8], font=small, fill=(0, 0, 0))
        self._text(f"time (last {_str(w, 'start', '1 minute')})", (left, bottom + 2, right, bottom + 18), small,
                   (0, 0, 0), 1, 1)
        lx = left
        for trace in w.findall("traces/trace"):
            color = _color(trace, "color", (0, 0, 255))
            self.draw.line((lx, bottom + 30, lx + 20, bottom + 30), fill=color, width=3)
            name = _str(trace, "name")
            self.draw.text((lx + 24, bottom + 23), name, font=small, fill=(0, 0, 0))
            lx += 40 + int(self.draw.textlength(name, font=small))

    def _unknown(self, w, x, y, width, height) -> None:
        self.draw.rectangle((x, y, x + width - 1, y + height - 1), outline=(255, 0, 255))
        self._text(w.get("type", "?"), (x, y, x + width, y + height), ImageFont.load_default(size=11), (255, 0, 255))


def render(bob: Path) -> Image.Image:
    return Renderer(ET.parse(bob).getroot()).render()


def render_all(opi_dir: Path, out: Path) -> list[Path]:
    """Render every ``.bob`` in ``opi_dir`` to ``out/<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for bob in sorted(opi_dir.glob("*.bob")):
        path = out / (bob.stem + ".png")
        render(bob).save(path, optimize=True)
        written.append(path)
    return written
