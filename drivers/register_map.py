"""Charger register maps: where a charger model keeps its values, and how they
are encoded on the wire.

DC chargers share no common Modbus layout, so each model gets one TOML file in
``config/register-maps/``. A map describes one connector's register block
(``connectors.base`` + index * ``connectors.stride`` + the register's offset),
the command registers the hub writes, and the table that turns the vendor's
status codes into the small set of hardware statuses the hub core understands.

File format (every key is checked; unknown keys are refused as typos)::

    model = "HubCharge MCS1200"          # required
    rated_power_w = 1200000              # optional
    word_order = "big"                   # default for 32-bit values: big | little
    [connectors]  base = 1000, stride = 256, max = 4
    [registers.NAME]                     # status, energy, power, lock required;
                                         # soc, voltage, current, ocmf, power_limit optional
      offset = 4                         # inside the connector block
      type = "uint32"                    # uint16 | int16 | uint32 | int32 | float32 | string (ocmf)
      kind = "input"                     # input | holding
      scale = 1                          # physical = raw * scale (energy in Wh, power in W)
      word_order = "little"              # optional override
      length = 200                       # strings: size in registers
      codes = { 0 = "unplugged", ... }   # status: hardware statuses; lock: locked | unlocked
    [commands.NAME]                      # start, stop, unlock (with value), power_limit (W, scale);
                                         # fail_safe_limit optional (W: what the charger holds by
                                         # itself when the hub stops talking to it)
      offset = 240, type = "uint16", value = 1

Everything here is pure: parsing, validation, address arithmetic and the
encoding of values into 16-bit registers and back. The driver and the
simulator both use it, so they cannot disagree about a layout.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Any

MAX_READ_REGISTERS = 125  # Modbus limit for one read request (function 3/4)


class HardwareStatus(str, Enum):
    """What a charger reports about one connector, normalised across vendors.
    The connector state machine maps these to OCPP connector states (R-C1)."""

    UNPLUGGED = "unplugged"
    PLUGGED = "plugged"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    FINISHED = "finished"
    FAULT = "fault"


class LockState(str, Enum):
    LOCKED = "locked"
    UNLOCKED = "unlocked"


class RegisterMapError(ValueError):
    """A register map file that cannot be used; ``problems`` lists every
    problem found, each starting with its key path."""

    def __init__(self, problems: list[str], source: str = "register map"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source} has {len(self.problems)} problem(s); fix them and load it again:\n{lines}"
        )


# Registers the driver knows how to read, per connector.
REQUIRED_REGISTERS = ("status", "energy", "power", "lock")
OPTIONAL_REGISTERS = ("soc", "voltage", "current", "ocmf", "power_limit")
REQUIRED_COMMANDS = ("start", "stop", "unlock", "power_limit")
OPTIONAL_COMMANDS = ("fail_safe_limit",)
WATT_COMMANDS = ("power_limit", "fail_safe_limit")  # they take the watts from the caller
# A charger that cannot say at least these is no use to the connector state machine.
REQUIRED_STATUSES = (
    HardwareStatus.UNPLUGGED,
    HardwareStatus.PLUGGED,
    HardwareStatus.CHARGING,
    HardwareStatus.FAULT,
)

TYPE_WIDTH = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
TYPE_STRUCT = {"uint16": "H", "int16": "h", "uint32": "I", "int32": "i", "float32": "f"}
WORD_ORDERS = ("big", "little")
KINDS = ("holding", "input")


@dataclass(frozen=True)
class RegisterSpec:
    """One value in a connector's register block."""

    name: str
    offset: int
    type: str  # uint16 | int16 | uint32 | int32 | float32 | string
    kind: str  # holding | input
    word_order: str = "big"  # big: most significant word first
    scale: Decimal = Decimal(1)  # physical value = raw * scale
    length: int = 0  # registers, for strings only
    codes: dict[int, str] = field(default_factory=dict)  # status and lock tables

    @property
    def width(self) -> int:
        return self.length if self.type == "string" else TYPE_WIDTH[self.type]


@dataclass(frozen=True)
class CommandSpec:
    """A holding register the hub writes to make the charger act."""

    name: str
    offset: int
    type: str
    word_order: str = "big"
    scale: Decimal = Decimal(1)
    value: int | None = None  # the code to write; None when the caller gives one (power limit)

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]


@dataclass(frozen=True)
class ReadSpan:
    """One read request: a run of registers of one kind."""

    kind: str
    address: int
    count: int


@dataclass(frozen=True)
class RegisterMap:
    model: str
    base: int
    stride: int
    max_connectors: int
    registers: dict[str, RegisterSpec]
    commands: dict[str, CommandSpec]
    rated_power_w: int | None = None
    source: str = ""

    def address(self, spec: RegisterSpec | CommandSpec, index: int) -> int:
        """Absolute register address of a value for connector ``index`` (0-based)."""
        if not 0 <= index < self.max_connectors:
            raise ValueError(
                f"connector index {index} is outside 0..{self.max_connectors - 1} of map {self.model!r}; "
                "check the connectors table of the charger in the hub config"
            )
        return self.base + index * self.stride + spec.offset

    def status_of(self, code: int) -> HardwareStatus | None:
        """The hardware status for a raw status code; None for a code the map does not know."""
        name = self.registers["status"].codes.get(code)
        return HardwareStatus(name) if name else None

    def status_code(self, status: HardwareStatus) -> int | None:
        """The first raw code the map lists for a status (what a simulator writes)."""
        for code, name in self.registers["status"].codes.items():
            if name == status.value:
                return code
        return None

    def lock_of(self, code: int) -> LockState | None:
        name = self.registers["lock"].codes.get(code)
        return LockState(name) if name else None

    def lock_code(self, state: LockState) -> int:
        for code, name in self.registers["lock"].codes.items():
            if name == state.value:
                return code
        raise KeyError(state)  # the loader guarantees both lock states exist

    def read_plan(self, index: int, names: tuple[str, ...] | None = None, max_gap: int = 8) -> list[ReadSpan]:
        """Fewest read requests that cover the named registers of one connector.

        Registers of the same kind closer than ``max_gap`` share one request:
        a few wasted registers cost less than another round trip.
        """
        wanted = [self.registers[n] for n in (names or tuple(self.registers)) if n in self.registers]
        spans: list[ReadSpan] = []
        for kind in KINDS:
            pieces = sorted(
                (self.address(s, index), self.address(s, index) + s.width) for s in wanted if s.kind == kind
            )
            for start, end in pieces:
                # Long strings are split at the Modbus read limit.
                while end - start > MAX_READ_REGISTERS:
                    spans.append(ReadSpan(kind, start, MAX_READ_REGISTERS))
                    start += MAX_READ_REGISTERS
                last = spans[-1] if spans and spans[-1].kind == kind else None
                if last and start - (last.address + last.count) <= max_gap and end - last.address <= MAX_READ_REGISTERS:
                    spans[-1] = ReadSpan(kind, last.address, max(end, last.address + last.count) - last.address)
                else:
                    spans.append(ReadSpan(kind, start, end - start))
        return spans


# --------------------------------------------------------------------------
# Encoding: pure functions between physical values and 16-bit registers.


def registers_to_raw(registers: list[int], type_: str, word_order: str = "big") -> int | float:
    """Raw value (before scale) from its registers. Bytes within a register
    are always big-endian in Modbus; only the word order varies by vendor."""
    width = TYPE_WIDTH[type_]
    if len(registers) != width:
        raise ValueError(f"{type_} needs {width} register(s), got {len(registers)}")
    words = list(registers) if word_order == "big" else list(reversed(registers))
    data = b"".join(w.to_bytes(2, "big") for w in words)
    return struct.unpack(">" + TYPE_STRUCT[type_], data)[0]


def raw_to_registers(raw: int | float, type_: str, word_order: str = "big") -> list[int]:
    """Registers for a raw value; refuses a value the type cannot hold."""
    fmt = ">" + TYPE_STRUCT[type_]
    if type_ != "float32":
        raw = int(raw)
    try:
        data = struct.pack(fmt, raw)
    except struct.error as exc:
        raise ValueError(f"value {raw} does not fit a {type_} register") from exc
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order == "big" else list(reversed(words))


def decode(spec: RegisterSpec | CommandSpec, registers: list[int]) -> float | int:
    """Physical value of a numeric register (raw * scale). A float32 that is
    not a finite number comes back as NaN for the caller to reject."""
    raw = registers_to_raw(registers, spec.type, spec.word_order)
    if spec.type == "float32":
        if not math.isfinite(raw):
            return math.nan
        return raw * float(spec.scale)
    if spec.scale == 1:
        return raw
    value = Decimal(raw) * spec.scale
    return int(value) if value == value.to_integral_value() else float(value)


def encode(spec: RegisterSpec | CommandSpec, value: float | int) -> list[int]:
    """Registers holding a physical value (value / scale, rounded for integer types)."""
    if spec.type == "float32":
        return raw_to_registers(float(value) / float(spec.scale), spec.type, spec.word_order)
    raw = (Decimal(str(value)) / spec.scale).to_integral_value()
    return raw_to_registers(int(raw), spec.type, spec.word_order)


def decode_string(registers: list[int]) -> str:
    """ASCII text packed two characters per register, high byte first; NUL padded."""
    data = b"".join(r.to_bytes(2, "big") for r in registers)
    return data.split(b"\x00", 1)[0].decode("ascii", errors="replace")


def encode_string(text: str, length: int) -> list[int]:
    data = text.encode("ascii", errors="replace")[: length * 2].ljust(length * 2, b"\x00")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# --------------------------------------------------------------------------
# Loading and validation.


def load_register_map(path: str | Path) -> RegisterMap:
    """Read and validate a register map file; raises RegisterMapError listing every problem."""
    return parse_register_map(read_map_file(path, "the charger's register_map setting"), source=str(path))


def read_map_file(path: str | Path, setting: str) -> dict[str, Any]:
    """The TOML of a map file; a missing or broken file is a RegisterMapError
    naming ``setting``, the config key that points at it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise RegisterMapError([f"file not found: {path}; check {setting}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError([f"not valid TOML: {exc}"], str(path)) from None


def parse_register_map(data: dict[str, Any], source: str = "register map") -> RegisterMap:
    """Validate a parsed map. Collects every problem rather than stopping at
    the first, so one edit fixes a file."""
    problems: list[str] = []

    def problem(path: str, text: str) -> None:
        problems.append(f"{path}: {text}")

    for key in data:
        if key not in ("model", "rated_power_w", "word_order", "connectors", "registers", "commands"):
            problem(key, "unknown key; expected model, rated_power_w, word_order, connectors, registers, commands")

    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        problem("model", "missing or empty; give the charger model name as text")
    rated = data.get("rated_power_w")
    if rated is not None and (not _is_int(rated) or rated <= 0):
        problem("rated_power_w", f"expected a positive whole number of watts, got {rated!r}")

    default_order = data.get("word_order", "big")
    if default_order not in WORD_ORDERS:
        problem("word_order", f"expected 'big' or 'little', got {default_order!r}")
        default_order = "big"

    base, stride, max_connectors = 0, 1, 1
    connectors = data.get("connectors")
    if not isinstance(connectors, dict):
        problem("connectors", "missing table; give base, stride and max (the per-connector register blocks)")
    else:
        for key in connectors:
            if key not in ("base", "stride", "max"):
                problem(f"connectors.{key}", "unknown key; expected base, stride, max")
        base = _int_field(connectors, "base", "connectors.base", problem, 0, 65535, default=0)
        stride = _int_field(connectors, "stride", "connectors.stride", problem, 1, 65535, default=1)
        max_connectors = _int_field(connectors, "max", "connectors.max", problem, 1, 64, default=1)
        if base + stride * max_connectors > 65536:
            problem("connectors", f"blocks end at {base + stride * max_connectors}, past the last Modbus address 65535")

    registers: dict[str, RegisterSpec] = {}
    reg_table = data.get("registers")
    if not isinstance(reg_table, dict):
        problem("registers", "missing table; give at least " + ", ".join(REQUIRED_REGISTERS))
        reg_table = {}
    for name in REQUIRED_REGISTERS:
        if name not in reg_table:
            problem(f"registers.{name}", "missing; this register is required")
    for name, entry in reg_table.items():
        path = f"registers.{name}"
        if name not in REQUIRED_REGISTERS + OPTIONAL_REGISTERS:
            problem(path, "unknown register; expected one of " + ", ".join(REQUIRED_REGISTERS + OPTIONAL_REGISTERS))
            continue
        if not isinstance(entry, dict):
            problem(path, "expected a table with offset, type and kind")
            continue
        spec = _register_spec(name, entry, path, default_order, stride, problem)
        if spec:
            registers[name] = spec

    _check_overlaps(list(registers.values()), "registers", problem)

    commands: dict[str, CommandSpec] = {}
    cmd_table = data.get("commands")
    if not isinstance(cmd_table, dict):
        problem("commands", "missing table; give " + ", ".join(REQUIRED_COMMANDS))
        cmd_table = {}
    for name in REQUIRED_COMMANDS:
        if name not in cmd_table:
            problem(f"commands.{name}", "missing; this command is required")
    for name, entry in cmd_table.items():
        path = f"commands.{name}"
        if name not in REQUIRED_COMMANDS + OPTIONAL_COMMANDS:
            problem(path, "unknown command; expected one of " + ", ".join(REQUIRED_COMMANDS + OPTIONAL_COMMANDS))
            continue
        if not isinstance(entry, dict):
            problem(path, "expected a table with offset and type")
            continue
        cmd = _command_spec(name, entry, path, default_order, stride, problem)
        if cmd:
            commands[name] = cmd

    if problems:
        raise RegisterMapError(problems, source)
    return RegisterMap(
        model=model.strip(),
        base=base,
        stride=stride,
        max_connectors=max_connectors,
        registers=registers,
        commands=commands,
        rated_power_w=rated,
        source=source,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(table, key, path, problem, low, high, default):
    value = table.get(key)
    if value is None:
        problem(path, f"missing; expected a whole number {low}..{high}")
        return default
    if not _is_int(value) or not low <= value <= high:
        problem(path, f"expected a whole number {low}..{high}, got {value!r}")
        return default
    return value


def _scale(entry, path, problem) -> Decimal:
    raw = entry.get("scale", 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        problem(f"{path}.scale", f"expected a positive number, got {raw!r}")
        return Decimal(1)
    try:
        # Through str so that 0.1 in the file is exactly 0.1, not a binary float.
        value = Decimal(str(raw))
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0:
        problem(f"{path}.scale", f"expected a positive number, got {raw!r}")
        return Decimal(1)
    return value


def _codes(entry, path, allowed: tuple[str, ...], problem) -> dict[int, str]:
    table = entry.get("codes")
    if not isinstance(table, dict) or not table:
        problem(f"{path}.codes", "missing table of raw code = name; names: " + ", ".join(allowed))
        return {}
    codes: dict[int, str] = {}
    for key, name in table.items():
        try:
            code = int(key, 0)
        except ValueError:
            problem(f"{path}.codes.{key}", "key must be a whole number (the raw register value)")
            continue
        if not 0 <= code <= 0xFFFF:
            problem(f"{path}.codes.{key}", "code must fit one register (0..65535)")
            continue
        if name not in allowed:
            problem(f"{path}.codes.{key}", f"unknown name {name!r}; expected one of " + ", ".join(allowed))
            continue
        codes[code] = name
    return codes


def _register_spec(name, entry, path, default_order, stride, problem) -> RegisterSpec | None:
    known = {"offset", "type", "kind", "word_order", "scale", "length", "codes", "unit"}
    for key in entry:
        if key not in known:
            problem(f"{path}.{key}", "unknown key; expected " + ", ".join(sorted(known)))
    ok = True
    offset = entry.get("offset")
    if not _is_int(offset) or not 0 <= offset < stride:
        problem(f"{path}.offset", f"expected a whole number 0..{stride - 1} (inside the connector block), got {offset!r}")
        ok = False
    type_ = entry.get("type")
    allowed_types = ("string",) if name == "ocmf" else tuple(TYPE_WIDTH)
    if name in ("status", "lock"):
        allowed_types = ("uint16", "int16")
    if type_ not in allowed_types:
        problem(f"{path}.type", f"expected one of {', '.join(allowed_types)}, got {type_!r}")
        ok = False
    kind = entry.get("kind")
    if kind not in KINDS:
        problem(f"{path}.kind", f"expected 'holding' or 'input', got {kind!r}")
        ok = False
    order = entry.get("word_order", default_order)
    if order not in WORD_ORDERS:
        problem(f"{path}.word_order", f"expected 'big' or 'little', got {order!r}")
        ok = False
    scale = _scale(entry, path, problem)
    length = 0
    if type_ == "string":
        length = entry.get("length")
        if not _is_int(length) or not 1 <= length <= 1000:
            problem(f"{path}.length", f"expected the string's size in registers, 1..1000, got {length!r}")
            ok, length = False, 0
    codes: dict[int, str] = {}
    if name == "status":
        codes = _codes(entry, path, tuple(s.value for s in HardwareStatus), problem)
        if codes:
            for status in REQUIRED_STATUSES:
                if status.value not in codes.values():
                    problem(f"{path}.codes", f"no code for {status.value!r}; every map must report it")
    elif name == "lock":
        codes = _codes(entry, path, tuple(s.value for s in LockState), problem)
        if codes:
            for state in LockState:
                if state.value not in codes.values():
                    problem(f"{path}.codes", f"no code for {state.value!r}; unlock cannot be confirmed without it")
    if not ok:
        return None
    spec = RegisterSpec(name, offset, type_, kind, order, scale, length, codes)
    if offset + spec.width > stride:
        problem(f"{path}.offset", f"register ends at {offset + spec.width}, past the connector block (stride {stride})")
        return None
    return spec


def _command_spec(name, entry, path, default_order, stride, problem) -> CommandSpec | None:
    known = {"offset", "type", "kind", "word_order", "scale", "value", "unit"}
    for key in entry:
        if key not in known:
            problem(f"{path}.{key}", "unknown key; expected " + ", ".join(sorted(known)))
    ok = True
    offset = entry.get("offset")
    if not _is_int(offset) or not 0 <= offset < stride:
        problem(f"{path}.offset", f"expected a whole number 0..{stride - 1} (inside the connector block), got {offset!r}")
        ok = False
    type_ = entry.get("type", "uint16")
    if type_ not in TYPE_WIDTH:
        problem(f"{path}.type", f"expected one of {', '.join(TYPE_WIDTH)}, got {type_!r}")
        ok = False
    if entry.get("kind", "holding") != "holding":
        problem(f"{path}.kind", "commands are written, so they must be 'holding' registers")
    order = entry.get("word_order", default_order)
    if order not in WORD_ORDERS:
        problem(f"{path}.word_order", f"expected 'big' or 'little', got {order!r}")
        ok = False
    scale = _scale(entry, path, problem)
    value = entry.get("value")
    if name in WATT_COMMANDS:
        if value is not None:
            problem(f"{path}.value", f"{name} takes the watts from the caller; remove value")
    elif not _is_int(value):
        problem(f"{path}.value", f"expected the whole number to write for {name}, got {value!r}")
        ok = False
    if not ok:
        return None
    if type_ != "float32" and value is not None:
        try:
            raw_to_registers(value, type_, order)
        except ValueError:
            problem(f"{path}.value", f"{value} does not fit a {type_} register")
            return None
    cmd = CommandSpec(name, offset, type_, order, scale, value)
    if offset + cmd.width > stride:
        problem(f"{path}.offset", f"register ends at {offset + cmd.width}, past the connector block (stride {stride})")
        return None
    return cmd


def _check_overlaps(specs: list[RegisterSpec], path: str, problem) -> None:
    for kind in KINDS:
        ranges = sorted((s.offset, s.offset + s.width, s.name) for s in specs if s.kind == kind)
        for (a_start, a_end, a_name), (b_start, _b_end, b_name) in zip(ranges, ranges[1:]):
            if b_start < a_end:
                problem(f"{path}.{b_name}.offset", f"overlaps {path}.{a_name} ({kind} offsets {a_start}..{a_end - 1})")
