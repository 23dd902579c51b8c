r"""Where a compiled step's time goes: its profiler trace, op by op, read against its HLO.

A ``jax.profiler`` trace records one event per executed XLA op: a thunk on XLA:CPU's executor
threads, a kernel on a GPU stream. Each carries the stats ``hlo_module`` (the program) and
``hlo_op`` (the instruction of the optimised HLO that launched it). This module joins the two:

* :func:`parse_hlo` reads the optimised HLO text (``jax.stages.Compiled.as_text()``) into its
  instructions, each with a **category** (``convolution``, ``matmul``, ``elementwise fusion``,
  ``reduction fusion``, ``copy/transpose``, ``collective``, ``control flow``, ``other``) and,
  for convolutions and matrix products, its **FLOPs** from the operand shapes (a multiply-add
  is 2) as XLA's cost analysis counts them: for a convolution the multiply-adds that read an
  input element, not padding or a hole of a dilation (:func:`conv_flops`; cuDNN's forward,
  input-gradient and filter-gradient custom calls included),
  ``2 · |out| · Π contracting`` for a matrix product (HLO ``dot`` or a cuBLAS custom call).
* :func:`op_events` collects a trace's events of one module as ``(op, start_ns, duration_ns)``,
  from the device planes where there are any (GPU, TPU), else from the host's (CPU).
* :func:`summarize` totals them per op and per category per step, with achieved FLOP/s, and
  the **busy time**: the union of the events' intervals, so ``busy / wall`` below 1 says the
  device waited (on the host, on launches) for that share of the step. Events of control-flow
  ops (``while``, ``call``, ``conditional``) enclose their bodies' events on CPU and are left
  out of the totals.

Pure functions of text and event lists, tested on programs with known FLOPs
(tests/test_profiling.py); ``experiments/bench/profile_step.py`` is the command.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

_COLLECTIVES = {
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "all-reduce-start",
  "all-gather-start",
  "collective-permute-start",
}
_CONTROL = {"while", "call", "conditional"}
_MOVES = {"copy", "transpose", "bitcast", "parameter", "reshape", "tuple", "get-tuple-element"}
_MOVES |= {"constant", "slice", "dynamic-slice", "pad", "concatenate", "broadcast", "copy-start"}
_MOVES |= {"copy-done", "dynamic-update-slice", "bitcast-convert"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\b[^=]*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: ``name = shape opcode(operands), attributes``."""

  name: str
  shape: str
  opcode: str
  operands: tuple[str, ...]
  attributes: str
  computation: str


@dataclasses.dataclass(frozen=True)
class Op:
  """A top-level instruction as the profile sees it: its category, FLOPs (None where not a
  convolution or matrix product) and a short description (shape, conv window)."""

  name: str
  category: str
  flops: float | None
  detail: str


def _split_type(rest: str) -> tuple[str, str]:
  """``"(f32[2]{0}, u8[4]{0}) custom-call(...)..."`` → (the type, what follows it)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[: i + 1], rest[i + 1 :].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def _split_call(text: str) -> tuple[str, str, str]:
  """``"opcode(a, b), attrs"`` → (opcode, the operand text, the attributes)."""
  opcode, _, rest = text.partition("(")
  depth = 1
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return opcode.strip(), rest[:i], rest[i + 1 :].lstrip(", ")
  return opcode.strip(), rest, ""


def _operand_names(text: str) -> tuple[str, ...]:
  """Operand names of ``"%a, f32[2]{0} %b"`` or ``"a, b"`` (typed or not, ``%`` or not)."""
  names = []
  for part in re.split(r",\s*(?![^\[{(]*[\]})])", text):
    m = re.search(r"%?([\w.\-]+)\s*$", part.strip())
    if m:
      names.append(m.group(1))
  return tuple(names)


def dims(shape: str) -> list[int]:
  """The dimensions of an array type ``"f32[64,8,8,128]{3,2,1,0}"``; of a tuple, its first
  element's (``[]`` for a scalar)."""
  m = re.search(r"\w+\[([\d,]*)\]", shape)
  if not m or not m.group(1):
    return []
  return [int(d) for d in m.group(1).split(",")]


def parse_instructions(hlo_text: str) -> dict[str, Instruction]:
  """Every instruction of every computation in ``hlo_text``, by name."""
  out, computation = {}, ""
  for line in hlo_text.splitlines():
    header = line.rstrip().endswith("{") and _HEADER.match(line.split("(")[0] + "{")
    if header:
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape, rest = _split_type(m.group(2).strip())
    opcode, operands, attributes = _split_call(rest)
    out[m.group(1)] = Instruction(
      m.group(1), shape, opcode, _operand_names(operands), attributes, computation
    )
  return out


def _callees(instruction: Instruction) -> list[str]:
  return re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", instruction.attributes)


def _window(attributes: str, spatial: int) -> dict[str, list]:
  """The ``window={…}`` of a convolution, per spatial dimension, with HLO's defaults."""
  m = re.search(r"window=\{([^}]*)\}", attributes)
  fields = dict(f.split("=", 1) for f in m.group(1).split()) if m else {}
  ints = lambda key, default: (
    [int(v) for v in fields[key].split("x")] if key in fields else [default] * spatial
  )
  pads = [tuple(int(v) for v in p.split("_")) for p in fields.get("pad", "").split("x") if p]
  return {
    "stride": ints("stride", 1),
    "pad": pads or [(0, 0)] * spatial,
    "lhs_dilate": ints("lhs_dilate", 1),
    "rhs_dilate": ints("rhs_dilate", 1),
  }


def conv_flops(x: list[int], w: list[int], y: list[int], attributes: str) -> float | None:
  """FLOPs of the convolution ``x * w -> y`` (shapes) with ``attributes`` (its ``window`` and
  ``dim_labels``): ``2 · batch · O · I · Π_d taps_d``, where ``taps_d`` counts the (output,
  kernel) position pairs of spatial dimension ``d`` that read an input element (not padding,
  not a hole of the input's dilation), as XLA's cost analysis counts."""
  m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attributes)
  if not m or not (x and w and y) or not (len(x) == len(w) == len(y) == len(m.group(1))):
    return None
  lhs, rhs, out = m.groups()
  spatial = len(lhs) - 2
  window = _window(attributes, spatial)
  taps = 1
  for d in range(spatial):
    n, k, o = x[lhs.index(str(d))], w[rhs.index(str(d))], y[out.index(str(d))]
    s, (lo, _), dl, dr = (window[f][d] for f in ("stride", "pad", "lhs_dilate", "rhs_dilate"))
    positions = (i * s + j * dr - lo for i in range(o) for j in range(k))
    taps *= sum(1 for p in positions if 0 <= p <= (n - 1) * dl and p % dl == 0)
  return 2.0 * y[out.index("b")] * y[out.index("f")] * w[rhs.index("i")] * taps


def _dot_flops(out: list[int], lhs: list[int], contracting: list[int]) -> float | None:
  if not out and not lhs:
    return None
  if any(d >= len(lhs) for d in contracting):
    return None
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def _flops(inst: Instruction, table: dict[str, Instruction]) -> float | None:
  """FLOPs of a convolution or matrix-product instruction (None for anything else)."""
  shape_of = lambda i: dims(table[inst.operands[i]].shape) if i < len(inst.operands) else []
  if inst.opcode == "convolution":
    return conv_flops(shape_of(0), shape_of(1), dims(inst.shape), inst.attributes)
  if inst.opcode == "dot":
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attributes)
    contracting = [int(d) for d in m.group(1).split(",") if d] if m else []
    return _dot_flops(dims(inst.shape), shape_of(0), contracting)
  if inst.opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]*)"', inst.attributes)
    target = target.group(1) if target else ""
    if "cudnn$conv" in target:
      # The window and dim_labels are those of the forward convolution x * w -> y.
      if "BackwardInput" in target:  # (dy, w) -> dx
        return conv_flops(dims(inst.shape), shape_of(1), shape_of(0), inst.attributes)
      if "BackwardFilter" in target:  # (x, dy) -> dw
        return conv_flops(shape_of(0), dims(inst.shape), shape_of(1), inst.attributes)
      return conv_flops(shape_of(0), shape_of(1), dims(inst.shape), inst.attributes)
    if "gemm" in target or "matmul" in target:
      m = re.search(r'"lhs_contracting_dimensions":\s*\[([^\]]*)\]', inst.attributes)
      contracting = [int(d) for d in re.findall(r"\d+", m.group(1))] if m else []
      return _dot_flops(dims(inst.shape), shape_of(0), contracting)
  return None


def _body(inst: Instruction, by_computation: dict[str, list[Instruction]]) -> list[Instruction]:
  """The instructions a fusion or custom call runs: those of its called computations, nested."""
  body, todo, seen = [], _callees(inst), set()
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    for member in by_computation.get(name, []):
      body.append(member)
      if member.opcode in ("fusion", "call"):
        todo.extend(_callees(member))
  return body


def _category(inst: Instruction, body: list[Instruction]) -> str:
  ops = {inst.opcode} | {b.opcode for b in body}
  target = re.search(r'custom_call_target="([^"]*)"', inst.attributes)
  target = target.group(1).lower() if target else ""
  if "convolution" in ops or "conv" in target:
    return "convolution"
  if "dot" in ops or "gemm" in target or "matmul" in target:
    return "matmul"
  if inst.opcode in _COLLECTIVES or ops & _COLLECTIVES:
    return "collective"
  if inst.opcode in _CONTROL:
    return "control flow"
  if inst.opcode == "fusion":
    inner = {b.opcode for b in body}
    if inner <= _MOVES:
      return "copy/transpose"
    if inner & {"reduce", "reduce-window", "scatter", "sort"}:
      return "reduction fusion"
    return "elementwise fusion"
  if inst.opcode in _MOVES:
    return "copy/transpose"
  if inst.opcode in ("reduce", "reduce-window", "scatter", "sort"):
    return "reduction fusion"
  return "other"


def _describe(inst: Instruction, main: Instruction, table: dict[str, Instruction]) -> str:
  """``"fusion: convolution [64,16,16,64] [5,5,64,128] -> [64,8,8,128] size=5x5 stride=2x2"``:
  the op, and its (first) convolution or matrix product with operand and result shapes."""
  shapes = [dims(table[o].shape) for o in main.operands[:2] if o in table]
  text = " ".join(str(d).replace(" ", "") for d in shapes) + f" -> {dims(main.shape)}".replace(
    " ", ""
  )
  window = re.search(r"window=\{([^}]*)\}", main.attributes)
  head = inst.opcode if main is inst else f"{inst.opcode}: {main.opcode}"
  return f"{head} {text.replace('->', ' -> ')}" + (f" {window.group(1)}" if window else "")


def parse_hlo(hlo_text: str) -> dict[str, Op]:
  """The instructions of ``hlo_text`` that can appear in a profile (those outside fused
  computations), by name, with category, FLOPs and a short description."""
  table = parse_instructions(hlo_text)
  by_computation = collections.defaultdict(list)
  for inst in table.values():
    by_computation[inst.computation].append(inst)
  fused = set()
  for inst in table.values():
    if inst.opcode in ("fusion", "custom-call"):
      fused.update(_callees(inst))
  ops = {}
  for inst in table.values():
    if inst.computation in fused:
      continue
    body = _body(inst, by_computation) if inst.opcode in ("fusion", "custom-call") else []
    flops, main = _flops(inst, table), inst
    for member in body:
      if member.opcode in ("convolution", "dot"):
        flops = (flops or 0.0) + (_flops(member, table) or 0.0)
        main = member if main is inst else main
    ops[inst.name] = Op(inst.name, _category(inst, body), flops, _describe(inst, main, table))
  return ops


def module_name(hlo_text: str) -> str:
  """The ``HloModule`` name of an HLO text (what the profile's ``hlo_module`` stat holds)."""
  m = re.search(r"HloModule\s+([\w.\-]+)", hlo_text)
  return m.group(1) if m else ""


def op_events(planes, module: str | None) -> list[tuple[str, int, int]]:
  """``(hlo_op, start_ns, duration_ns)`` of every event of ``module`` (None: of any module) in
  ``planes`` (``jax.profiler.ProfileData(...).planes``): from the planes named ``/device:…``
  where there are any, else from all; a plane's derived line ``XLA Ops``, where it has one,
  instead of its other lines (the same ops twice)."""
  planes = list(planes)
  device = [p for p in planes if p.name.startswith("/device:")]
  events = []
  for plane in device or planes:
    lines = list(plane.lines)
    derived = [line for line in lines if line.name == "XLA Ops"]
    for line in derived or lines:
      for event in line.events:
        stats = dict(event.stats)
        op = stats.get("hlo_op")
        if op and (module is None or str(stats.get("hlo_module", module)) == module):
          events.append((str(op), int(event.start_ns), int(event.duration_ns)))
  return events


def _union_ns(intervals: list[tuple[int, int]]) -> int:
  total, end = 0, None
  for start, stop in sorted(intervals):
    if end is None or start > end:
      total += stop - start
      end = stop
    elif stop > end:
      total += stop - end
      end = stop
  return total


def summarize(
  ops: dict[str, Op], events: list[tuple[str, int, int]], steps: int, wall_s: float, top: int = 25
) -> dict:
  """Per-step totals of ``events`` (``steps`` steps that took ``wall_s`` seconds):

  ``op_s`` (sum of the ops' durations; above the wall time where ops overlap), ``busy_s`` (the
  union of their intervals), ``busy_fraction = busy_s / wall``, ``ops_per_step``, and the rows
  ``categories``, ``kinds`` (ops of the same category and description, e.g. every call of one
  convolution shape, together) and ``top_ops`` (the ``top`` longest of each), each with
  ``seconds_per_step``, ``share`` of ``op_s``, ``count_per_step``, ``flops_per_step`` and
  ``flops_per_s`` (FLOPs over the op's own time) where known. Control-flow events are left out
  (their bodies' events are counted)."""
  per_op = collections.defaultdict(lambda: [0, 0])
  intervals = []
  for name, start, duration in events:
    op = ops.get(name)
    if op is not None and op.category == "control flow":
      continue
    per_op[name][0] += duration
    per_op[name][1] += 1
    intervals.append((start, start + duration))
  total_ns = sum(t for t, _ in per_op.values())

  def row(label: str, ns: int, count: int, flops: float | None, **extra) -> dict:
    seconds = ns / 1e9 / steps
    return {
      label: extra.pop("name"),
      **extra,
      "seconds_per_step": seconds,
      "share": ns / total_ns if total_ns else 0.0,
      "count_per_step": count / steps,
      "flops_per_step": flops,
      "flops_per_s": flops / seconds if flops and seconds > 0 else None,
    }

  measured = [
    (ops.get(name, Op(name, "other", None, "not in the HLO")), ns, count)
    for name, (ns, count) in per_op.items()
  ]

  def grouped(label: str, key) -> list[dict]:
    """Rows of ``measured`` summed by ``key(op)`` (``(name, extra columns)``), longest first;
    FLOPs only where every op of the group has them."""
    groups = {}
    for op, ns, count in measured:
      name, extra = key(op)
      g = groups.setdefault((name, tuple(extra.items())), [0, 0, 0.0, True])
      g[0] += ns
      g[1] += count
      g[2] += op.flops * count / steps if op.flops is not None else 0.0
      g[3] = g[3] and op.flops is not None
    rows = [
      row(label, ns, count, flops if known else None, name=name, **dict(extra))
      for (name, extra), (ns, count, flops, known) in groups.items()
    ]
    return sorted(rows, key=lambda r: -r["seconds_per_step"])

  categories = grouped("category", lambda op: (op.category, {}))
  kinds = grouped("kind", lambda op: (op.detail, {"category": op.category}))
  op_rows = grouped("op", lambda op: (op.name, {"category": op.category, "detail": op.detail}))
  busy = _union_ns(intervals) / 1e9 / steps
  return {
    "steps": steps,
    "wall_s_per_step": wall_s / steps,
    "op_s_per_step": total_ns / 1e9 / steps,
    "busy_s_per_step": busy,
    "busy_fraction": busy / (wall_s / steps) if wall_s > 0 else None,
    "ops_per_step": sum(c for _, c in per_op.values()) / steps,
    "categories": categories,
    "kinds": kinds[:top],
    "top_ops": op_rows[:top],
  }
