"""Grid meter register maps: where a meter keeps its readings and how they are
encoded, one TOML file per meter family in ``config/meter-maps/``.

A meter's readings sit in one block of registers of one kind. The block
starts at a fixed ``base``, or, for a SunSpec meter, where the SunSpec model
chain says: after the "SunS" marker at one of ``sunspec.bases``, the first
model whose id is in ``sunspec.models`` (the chain is walked by each model's
own length, never by fixed addresses, since devices differ in the common
model's length). Offsets are counted from the block start (for SunSpec, from
the model's id register).

File format (every key is checked; unknown keys are refused as typos)::

    model = "SunSpec meter (models 201-204)"   # required
    kind = "holding"                           # holding | input (function 3 or 4)
    word_order = "big"                         # default for 32-bit values
    base = 0                                   # fixed block start, or:
    [sunspec]  bases = [40000, 50000, 0], models = [203, 204, 202, 201], length = 105
    [registers.NAME]      # power required (total real power, W, positive when drawn
                          # from the grid); power_l1..3 (W), current_l1..3 (A),
                          # voltage_l1..3 (V), frequency (Hz), energy_import and
                          # energy_export (Wh) optional
      offset = 18
      type = "int16"      # int16 | uint16 | int32 | uint32 | float32
      scale = 1           # physical = raw * scale (* 10 ** scale factor)
      scale_factor = 22   # offset of a SunSpec scale factor (int16 exponent, -10..10)
      missing = [0x8000]  # raw values that mean "not implemented": no value, never zero
      optional = true     # some devices refuse it (illegal address): read apart, absent then
      word_order = "little"
      unit = "W"          # documentation only

The required readings and their scale factors are read in one request, so a
value and its scale factor always come from the same instant. Pure: parsing,
validation, read plans and decoding. The driver and the simulator both use
it, so they cannot disagree about a layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from drivers.register_map import (
    KINDS,
    MAX_READ_REGISTERS,
    TYPE_WIDTH,
    WORD_ORDERS,
    ReadSpan,
    RegisterMapError,
    _is_int,
    _scale,
    raw_to_registers,
    read_map_file,
    registers_to_raw,
)

READINGS = (
    "power", "power_l1", "power_l2", "power_l3",
    "current_l1", "current_l2", "current_l3",
    "voltage_l1", "voltage_l2", "voltage_l3",
    "frequency", "energy_import", "energy_export",
)
REQUIRED = ("power",)
SUNSPEC_MARKER = (0x5375, 0x6E53)  # "SunS"
SUNSPEC_END = 0xFFFF
SCALE_FACTOR_MISSING = 0x8000
SCALE_FACTOR_RANGE = range(-10, 11)


@dataclass(frozen=True)
class MeterRegister:
    name: str
    offset: int
    type: str
    word_order: str = "big"
    scale: Decimal = Decimal(1)
    scale_factor: int | None = None  # offset of its SunSpec scale factor register
    missing: tuple[int, ...] = ()
    optional: bool = False

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]

    def span(self) -> tuple[int, int]:
        """First and one-past-last offset of the register and its scale factor."""
        ends = [self.offset, self.offset + self.width]
        if self.scale_factor is not None:
            ends += [self.scale_factor, self.scale_factor + 1]
        return min(ends), max(ends)


@dataclass(frozen=True)
class SunSpecChain:
    bases: tuple[int, ...]
    models: tuple[int, ...]
    length: int  # a model shorter than this cannot hold the map's offsets


@dataclass(frozen=True)
class MeterMap:
    model: str
    kind: str
    registers: dict[str, MeterRegister]
    base: int | None = None
    sunspec: SunSpecChain | None = None
    source: str = ""

    def read_plan(self, start: int) -> tuple[ReadSpan, list[tuple[str, ReadSpan]]]:
        """One request for every required reading (with its scale factors), and
        one request per optional reading, named, for a block starting at ``start``."""
        main = [r for r in self.registers.values() if not r.optional]
        low = min(r.span()[0] for r in main)
        high = max(r.span()[1] for r in main)
        optional = [(r.name, ReadSpan(self.kind, start + r.span()[0], r.span()[1] - r.span()[0]))
                    for r in self.registers.values() if r.optional]
        return ReadSpan(self.kind, start + low, high - low), optional


class MeterValueError(ValueError):
    """Registers that cannot be a reading (a scale factor out of range, a NaN)."""


def word_pattern(words: list[int], word_order: str) -> int:
    """The registers as one unsigned number, most significant word first."""
    ordered = words if word_order == "big" else list(reversed(words))
    value = 0
    for w in ordered:
        value = (value << 16) | w
    return value


def decode_readings(meter_map: MeterMap, image: dict[int, int], start: int, names=None) -> dict[str, float | None]:
    """Physical values from the registers read (``address -> word``). A value
    the meter marks as not implemented, or whose scale factor is, comes back
    as None. Raises MeterValueError for registers that cannot be a value."""
    out: dict[str, float | None] = {}
    for name in names or meter_map.registers:
        reg = meter_map.registers[name]
        address = start + reg.offset
        try:
            words = [image[a] for a in range(address, address + reg.width)]
        except KeyError:
            continue  # not read (an optional register the meter refused)
        if word_pattern(words, reg.word_order) in reg.missing:
            out[name] = None
            continue
        raw = registers_to_raw(words, reg.type, reg.word_order)
        if reg.type == "float32" and not math.isfinite(raw):
            raise MeterValueError(f"{name} is not a number (float32 {raw})")
        value = float(raw) * float(reg.scale)
        if reg.scale_factor is not None:
            sf_word = image.get(start + reg.scale_factor)
            if sf_word is None or sf_word == SCALE_FACTOR_MISSING:
                out[name] = None
                continue
            exponent = registers_to_raw([sf_word], "int16")
            if exponent not in SCALE_FACTOR_RANGE:
                raise MeterValueError(f"{name}'s scale factor {exponent} is outside -10..10")
            value *= 10.0 ** exponent
        out[name] = value
    return out


def encode_reading(reg: MeterRegister, value: float, exponent: int = 0) -> list[int]:
    """Registers holding a physical value (what a simulator writes); refuses a
    value the type cannot hold at that exponent."""
    raw = value / float(reg.scale) / 10.0 ** exponent
    return raw_to_registers(raw if reg.type == "float32" else round(raw), reg.type, reg.word_order)


def sunspec_next(address: int, model_id: int, length: int, chain: SunSpecChain) -> tuple[str, int]:
    """One step of the SunSpec walk at a model header: ("found", address) for a
    wanted meter model, ("next", address of the next header), or ("end", 0)."""
    if model_id == SUNSPEC_END:
        return "end", 0
    if model_id in chain.models and length >= chain.length:
        return "found", address
    return "next", address + 2 + length


# --------------------------------------------------------------------------
# Loading and validation.


def load_meter_map(path: str | Path) -> MeterMap:
    """Read and validate a meter map file; raises RegisterMapError listing every problem."""
    return parse_meter_map(read_map_file(path, "[power] meter register_map"), source=str(path))


def parse_meter_map(data: dict[str, Any], source: str = "meter map") -> MeterMap:
    problems: list[str] = []

    def problem(path: str, text: str) -> None:
        problems.append(f"{path}: {text}")

    known = ("model", "kind", "word_order", "base", "sunspec", "registers")
    for key in data:
        if key not in known:
            problem(key, "unknown key; expected " + ", ".join(known))
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        problem("model", "missing or empty; give the meter family's name as text")
    kind = data.get("kind", "holding")
    if kind not in KINDS:
        problem("kind", f"expected 'holding' or 'input', got {kind!r}")
    order = data.get("word_order", "big")
    if order not in WORD_ORDERS:
        problem("word_order", f"expected 'big' or 'little', got {order!r}")
        order = "big"

    base, chain = data.get("base"), None
    if ("base" in data) == ("sunspec" in data):
        problem("base", "give either base (a fixed block start) or a [sunspec] table, not both or neither")
    elif base is not None and (not _is_int(base) or not 0 <= base <= 65535):
        problem("base", f"expected an address 0..65535, got {base!r}")
    if "sunspec" in data:
        chain = _sunspec(data["sunspec"], problem)

    registers: dict[str, MeterRegister] = {}
    table = data.get("registers")
    if not isinstance(table, dict):
        problem("registers", "missing table; give at least power")
        table = {}
    for name in REQUIRED:
        if name not in table:
            problem(f"registers.{name}", "missing; this reading is required")
    for name, entry in table.items():
        path = f"registers.{name}"
        if name not in READINGS:
            problem(path, "unknown reading; expected one of " + ", ".join(READINGS))
        elif not isinstance(entry, dict):
            problem(path, "expected a table with offset and type")
        elif (reg := _register(name, entry, path, order, problem)) is not None:
            registers[name] = reg
    if registers.get("power") is not None and registers["power"].optional:
        problem("registers.power.optional", "total power is what the hub needs; it cannot be optional")

    main = [r for r in registers.values() if not r.optional]
    if main:
        low, high = min(r.span()[0] for r in main), max(r.span()[1] for r in main)
        if high - low > MAX_READ_REGISTERS:
            problem("registers", f"the readings span {high - low} registers; they must fit one request "
                                 f"({MAX_READ_REGISTERS}) so that values and scale factors agree")
        limit = 65536 - (base or 0) if chain is None else chain.length + 2
        if high > limit:
            problem("registers", f"a reading ends at offset {high}, past the block ({limit} registers)")
    if problems:
        raise RegisterMapError(problems, source)
    return MeterMap(model.strip(), kind, registers, base, chain, source)


def _sunspec(entry, problem) -> SunSpecChain | None:
    if not isinstance(entry, dict):
        problem("sunspec", "expected a table with bases, models and length")
        return None
    for key in entry:
        if key not in ("bases", "models", "length"):
            problem(f"sunspec.{key}", "unknown key; expected bases, models, length")
    bases, models, length = entry.get("bases", [40000, 50000, 0]), entry.get("models"), entry.get("length")
    ok = True
    if not isinstance(bases, list) or not bases or not all(_is_int(b) and 0 <= b <= 65533 for b in bases):
        problem("sunspec.bases", f"expected a list of addresses 0..65533, got {bases!r}")
        ok = False
    if not isinstance(models, list) or not models or not all(_is_int(m) and 1 <= m < SUNSPEC_END for m in models):
        problem("sunspec.models", f"expected a list of SunSpec model ids, got {models!r}")
        ok = False
    if not _is_int(length) or not 1 <= length <= 65535:
        problem("sunspec.length", f"expected the meter model's length in registers, got {length!r}")
        ok = False
    return SunSpecChain(tuple(bases), tuple(models), length) if ok else None


def _register(name, entry, path, default_order, problem) -> MeterRegister | None:
    def address(v) -> bool:
        return _is_int(v) and 0 <= v <= 65535

    checks = {  # key: (default, test, what is expected)
        "offset": (None, address, "a whole number 0..65535 (from the block start)"),
        "type": (None, lambda v: v in TYPE_WIDTH, "one of " + ", ".join(TYPE_WIDTH)),
        "word_order": (default_order, lambda v: v in WORD_ORDERS, "'big' or 'little'"),
        "scale_factor": (None, lambda v: v is None or address(v), "the offset of an int16 scale factor register"),
        "missing": ([], lambda v: isinstance(v, list) and all(_is_int(m) and m >= 0 for m in v),
                    "a list of raw register values"),
        "optional": (False, lambda v: isinstance(v, bool), "true or false"),
    }
    for key in entry:
        if key not in checks and key not in ("scale", "unit"):
            problem(f"{path}.{key}", "unknown key; expected " + ", ".join(sorted([*checks, "scale", "unit"])))
    got = {}
    for key, (default, good, expected) in checks.items():
        value = entry.get(key, default)
        if good(value):
            got[key] = value
        else:
            problem(f"{path}.{key}", f"expected {expected}, got {value!r}")
    scale = _scale(entry, path, problem)
    if len(got) < len(checks):
        return None
    return MeterRegister(name, got["offset"], got["type"], got["word_order"], scale, got["scale_factor"],
                         tuple(got["missing"]), got["optional"])
