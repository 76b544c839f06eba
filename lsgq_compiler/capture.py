"""Capture: a diffusers transformer + example inputs -> a form the passes can work on.

Two forms (``QuantConfig.capture``):

- **graph** (``torch.export``, non-strict, static shapes): an FX ``GraphModule``. Every
  ``aten.linear`` node whose weight belongs to an ``nn.Linear`` is tagged with that module's
  path (FQN in the user's model) in ``node.meta["lsgq_path"]``. Before export, capture-time
  rewrites on the deep copy make common diffusers constructs traceable (see
  :func:`_precompute_sincos_embeddings`).
- **module** (the fallback when ``torch.export`` cannot trace the model, e.g. data-dependent
  Python such as ``if tensor:`` / ``.item()`` / ``.numpy()`` routing): a deep copy of the
  user's eager model; the linears that its forward calls on the example inputs are listed in
  call order, and the passes swap each for a ``QuantLinear`` in place.

Either way the passes see one tensor per call: the model's only output, or, for a model
returning several outputs (tuples, lists, dicts: LTX2Video's video + audio, ZImage's list),
every floating-point output flattened and concatenated. :class:`OutputStructure` rebuilds the
model's own return structure from it.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .errors import CaptureError, user_error

PATH_KEY = "lsgq_path"
_PREFIX = "model."
CAPTURE_FORMS = ("graph", "module", "auto")
Inputs = Any  # tuple of positional args, dict of kwargs, or a single tensor


def normalize_inputs(inputs: Inputs, what: str = "example_inputs") -> tuple[tuple, dict]:
    """``tuple | list | dict | Tensor`` -> ``(args, kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        if len(inputs) == 2 and isinstance(inputs[0], (tuple, list)) and isinstance(inputs[1], dict):
            return tuple(inputs[0]), dict(inputs[1])
        return tuple(inputs), {}
    raise user_error(f"{what} must be a tuple of positional inputs, a dict of keyword inputs or a tensor, "
                     f"got {type(inputs).__name__}",
                     "e.g. compile_quantized(model, (x,)) or compile_quantized(model, {'hidden_states': x, ...})",
                     TypeError)


def tensor_leaves(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """Named tensors in (args, kwargs), in a stable order (for shape/NaN checks); tensors inside
    lists/tuples/dicts are named ``key.i`` (ZImage takes lists of tensors)."""
    out: list[tuple[str, torch.Tensor]] = []

    def walk(name: str, v: Any) -> None:
        if isinstance(v, torch.Tensor):
            out.append((name, v))
        elif isinstance(v, (list, tuple)):
            for i, e in enumerate(v):
                walk(f"{name}.{i}", e)
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                walk(f"{name}.{k}", v[k])

    for i, a in enumerate(args):
        walk(f"arg{i}", a)
    for k in sorted(kwargs):
        walk(k, kwargs[k])
    return out


def _unwrap(out: Any) -> Any:
    """The model's own result: ``output[0]`` of a one-element tuple (diffusers' ``return_dict=False``
    form of a single output), ``.to_tuple()`` of a diffusers ``BaseOutput``, else as returned."""
    if hasattr(out, "to_tuple") and not isinstance(out, torch.Tensor):
        out = out.to_tuple()
    if isinstance(out, tuple) and len(out) == 1:
        out = out[0]
    return out


@dataclass
class OutputStructure:
    """How the passes' one output tensor maps back onto what the model returns.

    ``single``: the model returns one tensor, passed through unchanged. Otherwise the flat
    tensor is the concatenation of every tensor leaf (``reshape(-1)``, cast to ``flat_dtype``)
    in pytree order; :meth:`restore` splits it, reshapes, casts back and rebuilds the structure
    (non-tensor leaves are the values the model returned at capture).
    """

    single: bool
    spec: Any = None
    leaves: list[Any] = field(default_factory=list)  # ("tensor", shape, dtype) or ("const", value)
    flat_dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, out: Any) -> "OutputStructure":
        out = _unwrap(out)
        if isinstance(out, torch.Tensor):
            return cls(single=True)
        if hasattr(out, "sample") and isinstance(getattr(out, "sample"), torch.Tensor) and not isinstance(out, dict):
            return cls(single=True)
        leaves, spec = pytree.tree_flatten(out)
        tens = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tens:
            raise user_error(f"the model returned {type(out).__name__} with no tensor in it",
                             "quantize a module whose forward returns its output tensor(s)", TypeError)
        fl = [t.dtype for t in tens if t.is_floating_point()]
        dtype = fl[0] if fl and all(d == fl[0] for d in fl) else torch.float32
        meta = [("tensor", tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else ("const", x) for x in leaves]
        return cls(single=False, spec=spec, leaves=meta, flat_dtype=dtype)

    def flatten(self, out: Any) -> torch.Tensor:
        out = _unwrap(out)
        if self.single:
            return out.sample if not isinstance(out, torch.Tensor) else out
        leaves = pytree.tree_leaves(out)
        return torch.cat([x.reshape(-1).to(self.flat_dtype) for x in leaves if isinstance(x, torch.Tensor)])

    def restore(self, flat: torch.Tensor) -> Any:
        """The model's return structure from the flat output ``(sum of leaf numels,)``."""
        if self.single:
            return flat
        vals, i = [], 0
        for m in self.leaves:
            if m[0] == "const":
                vals.append(m[1])
                continue
            n = 1
            for d in m[1]:
                n *= d
            vals.append(flat[i:i + n].reshape(m[1]).to(m[2]))
            i += n
        return pytree.tree_unflatten(vals, self.spec)

    def describe(self) -> str:
        if self.single:
            return "tensor"
        shapes = [tuple(m[1]) for m in self.leaves if m[0] == "tensor"]
        return f"{pytree.treespec_pprint(self.spec) if hasattr(pytree, 'treespec_pprint') else 'structure'} " \
               f"with {len(shapes)} tensors {shapes}"


class FlatOutput(nn.Module):
    """Calls ``model(..., return_dict=False)`` when it accepts that and returns the passes'
    one tensor (see :class:`OutputStructure`). This is what gets exported (graph form) or run
    (module form)."""

    def __init__(self, model: nn.Module, structure: OutputStructure | None = None) -> None:
        super().__init__()
        self.model = model
        self.structure = structure
        try:
            params = inspect.signature(model.forward).parameters
            self._return_dict = "return_dict" in params
        except (TypeError, ValueError):
            self._return_dict = False

    def raw(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("return_dict", None)
        return self.model(*args, **kwargs, return_dict=False) if self._return_dict else self.model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.raw(*args, **kwargs)
        if self.structure is not None:
            return self.structure.flatten(out)
        if isinstance(out, (tuple, list)):  # no structure recorded: the first output, as before
            out = out[0]
        return out.sample if hasattr(out, "sample") else out


ReturnTensor = FlatOutput  # the name used before several outputs were kept


@dataclass
class Captured:
    """A captured model: the graph (or the module-form copy), the inputs it was captured at,
    and provenance.

    ``form``: ``"graph"`` or ``"module"``; ``gm``: the ``GraphModule`` (graph form) or the
    :class:`FlatOutput` around the deep copy (module form); ``reference_output``: the flat
    float output (see :class:`OutputStructure`); ``module_linears``: module form only, the
    paths of the ``nn.Linear`` layers the forward called on the example inputs, in call order;
    ``rewrites``: capture-time rewrites applied; ``graph_error``: why graph capture was not
    used (module form under ``capture="auto"``).
    """

    gm: nn.Module
    model_class: str
    args: tuple
    kwargs: dict
    reference_output: torch.Tensor
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    form: str = "graph"
    output_structure: OutputStructure = field(default_factory=lambda: OutputStructure(single=True))
    module_linears: list[str] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)
    graph_error: str | None = None

    def linear_nodes(self) -> list[fx.Node]:
        return linear_nodes(self.gm) if self.form == "graph" else []

    def notes(self) -> dict[str, Any]:
        """What capture decided, for the plan and ``report()``."""
        d: dict[str, Any] = {"form": self.form, "outputs": self.output_structure.describe()}
        if self.rewrites:
            d["rewrites"] = list(self.rewrites)
        if self.graph_error:
            d["graph_error"] = self.graph_error
        if self.form == "module":
            d["skipped"] = list(GRAPH_ONLY_STEPS)
        return d


#: steps that need the graph; in module form they are skipped (recorded in the plan)
GRAPH_ONLY_STEPS = ("QuantizeAttention: attention stays in the model's own SDPA (8-bit attention replaces graph nodes)",)


def linear_nodes(gm: nn.Module) -> list[fx.Node]:
    """``aten.linear`` call nodes tagged with a module path, in graph order (none in module form)."""
    if not isinstance(gm, fx.GraphModule):
        return []
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target == torch.ops.aten.linear.default and PATH_KEY in n.meta]


def _user_frame(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "site-packages/torch/" not in f.filename and "lsgq_compiler" not in f.filename]
    return f"{_short_path(frames[-1].filename)}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" \
        if frames else ""


def _explain_export_failure(model: nn.Module, err: BaseException) -> CaptureError:
    """A CaptureError that names the construct torch.export stopped at and a fix that works.

    The model has already run eagerly on the same inputs when this is called, so the advice is
    never "check the model runs": it is about tracing.
    """
    name = type(model).__name__
    text = str(err)
    msg = text.strip().splitlines()
    head = msg[0][:300] if msg else type(err).__name__
    where = _user_frame(err) or "inside torch.export (no frame in the model's code)"
    module_fix = "compile with QuantConfig(capture='module') (capture='auto', the default, falls back to it): " \
                 "the eager model with quantized linears, no graph"
    if re.search(r"data.dependent|GuardOnDataDependent|Could not guard on data-dependent|"
                 r"Could not extract specialized integer|unbacked|\.numpy\(\)|item\(\)", text, re.I):
        construct = ("data-dependent Python: a branch, loop or size decided by tensor values "
                     "(`if tensor:`, `.item()`, `.tolist()`, `.numpy()`)")
        todo = f"{module_fix}; or make that line depend only on shapes/config (torch.cond for a branch)"
    elif re.search(r"fake tensor|FakeTensor|constant", text) and re.search(r"lift|mutat|in-place|inplace|\.data", text, re.I):
        construct = ("an in-place write into a tensor made inside forward() and kept as a constant "
                     "(e.g. `buf.data[...].copy_(...)`)")
        todo = f"precompute that tensor at the example inputs' size before capture, or {module_fix}"
    elif "Unsupported" in text or "not supported" in text:
        construct = "an operation torch.export does not support"
        todo = f"replace it with a traceable equivalent, or {module_fix}"
    else:
        construct = f"{type(err).__name__} while tracing (the model runs eagerly on these inputs; tracing it fails)"
        todo = module_fix
    return CaptureError(f"could not capture {name} as a graph: {construct}\n  at {where}\n  torch said: {head}\n"
                        f"  -> {todo}")


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch logs the whole traced graph on a data-dependent failure; the CaptureError says
    what matters, so those loggers are quieted while exporting."""
    names = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.CRITICAL)
    try:  # torch also prints the partial graph straight to stderr on a failed trace
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lvl in saved:
            lg.setLevel(lvl)


_VALUE_READS = (torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist)


def _model_line() -> str:
    """``file:line (code)`` of the innermost frame outside torch and lsgq_compiler."""
    for f in reversed(traceback.extract_stack()):
        if "site-packages/torch/" not in f.filename and "lsgq_compiler" not in f.filename \
                and "/torch/overrides" not in f.filename:
            return f"{_short_path(f.filename)}:{f.lineno} ({(f.line or '').strip()})"
    return "?"


def _short_path(path: str) -> str:
    """``.../site-packages/diffusers/x.py`` -> ``diffusers/x.py`` (other paths unchanged)."""
    return path.split("site-packages/", 1)[-1]


class _RecordValueReads(TorchFunctionMode):
    """Eager run: remember every Python value forward() reads out of a tensor
    (``bool(t)``, ``t.item()``, ``t.tolist()``), in order, with the line that read it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[Any, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func in _VALUE_READS:
            self.reads.append((out, _model_line()))
        return out


class _ReplayValueReads(TorchFunctionMode):
    """Tracing run: answer the same reads with the values of the eager run (specialising the
    branch/size to the example inputs) and put a guard in the graph for each: at run time an
    input that gives another value (takes the other branch) stops with an error naming the line."""

    def __init__(self, reads: list[tuple[Any, str]]) -> None:
        super().__init__()
        self.reads, self.i = reads, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func not in _VALUE_READS:
            return func(*args, **(kwargs or {}))
        if self.i >= len(self.reads):
            raise RuntimeError("value reads differ between the eager run and the trace")
        value, line = self.reads[self.i]
        self.i += 1
        t = args[0]
        with torch.overrides._no_torch_function_mode() if hasattr(torch.overrides, "_no_torch_function_mode") \
                else contextlib.nullcontext():
            expected = torch.tensor(value, dtype=t.dtype if func is not torch.Tensor.__bool__ else torch.bool,
                                    device=t.device)
            got = t.bool() if func is torch.Tensor.__bool__ else t
            cond = (got == expected).all()
        torch._assert_async(cond, f"lsgq capture guard: {line} read {value!r} from a tensor when the model was "
                                  f"captured, and this input gives another value (it takes another branch or size) "
                                  f"-> compile with QuantConfig(capture='module') for inputs that differ there, or "
                                  f"capture with inputs that take this branch")
        return value


class _InMode(nn.Module):
    """Runs ``inner`` inside a torch-function mode (what gets exported for specialisation)."""

    def __init__(self, inner: nn.Module, mode: TorchFunctionMode) -> None:
        super().__init__()
        self.inner, self.mode = inner, mode

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.mode:
            return self.inner(*args, **kwargs)


def _is_data_dependent(text: str) -> bool:
    return bool(re.search(r"data.dependent|GuardOnDataDependent|unbacked|non-nested SymInt|"
                          r"Could not extract specialized integer", text, re.I))


def _sincos_targets(model: nn.Module) -> list[nn.Module]:
    """Modules that rebuild a sin-cos positional table inside forward() when the input size
    differs from their ``sample_*`` config (CogVideoX / ConsisID ``CogVideoXPatchEmbed``)."""
    return [m for m in model.modules() if hasattr(m, "_get_positional_embeddings")
            and all(hasattr(m, a) for a in ("sample_height", "sample_width", "sample_frames"))
            and getattr(m, "use_positional_embeddings", False)
            and not getattr(m, "use_learned_positional_embeddings", False)]


def _precompute_sincos_embeddings(model: nn.Module, run: Any) -> list[str]:
    """Capture-time rewrite for ``CogVideoXPatchEmbed``: its forward calls
    ``_get_positional_embeddings`` (which writes into ``joint_pos_embedding.data[...]``, a tensor
    torch.export would lift as a fake constant) whenever frames/height/width differ from
    ``sample_*``. On the deep copy, record the sizes the example inputs reach it with, build the
    table once eagerly at those sizes and set ``sample_*`` to them, so the traced forward takes
    the "same size" branch and adds the precomputed buffer. Exact: the same function, the same
    sizes. Returns one line per rewritten module."""
    targets = _sincos_targets(model)
    if not targets:
        return []
    seen: dict[nn.Module, tuple[int, int, int]] = {}
    hooks = []
    for m in targets:
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            img = kwargs.get("image_embeds", args[1] if len(args) > 1 else None)
            if isinstance(img, torch.Tensor) and img.dim() == 5 and mod not in seen:
                _, f, _, h, w = img.shape
                seen[mod] = (int(h), int(w), (int(f) - 1) * int(mod.temporal_compression_ratio) + 1)
        hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    done = []
    names = {m: n for n, m in model.named_modules()}
    for m, (h, w, f) in seen.items():
        if (m.sample_height, m.sample_width, m.sample_frames) == (h, w, f):
            continue
        with torch.no_grad():
            table = m._get_positional_embeddings(h, w, f)
        ref = getattr(m, "pos_embedding", None)
        if isinstance(ref, torch.Tensor):
            table = table.to(device=ref.device, dtype=ref.dtype)
        m.register_buffer("pos_embedding", table, persistent=False)
        done.append(f"{names.get(m, type(m).__name__)}: sin-cos positional table precomputed at "
                    f"{f}x{h}x{w} (config sample_* {m.sample_frames}x{m.sample_height}x{m.sample_width})")
        m.sample_height, m.sample_width, m.sample_frames = h, w, f
    return done


def _export_specialised(wrapper: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, list[str], Exception | None]:
    """Export again with every tensor-value read (``bool``/``item``/``tolist``) decided by the
    example inputs and guarded (see :class:`_ReplayValueReads`). ``(None, [])`` when that
    does not trace either (e.g. ``.numpy()`` routing, sizes from tensor values): then
    ``(None, [], error)`` and the caller falls back to module form."""
    rec = _RecordValueReads()
    with torch.no_grad(), rec:
        wrapper(*args, **kwargs)
    if not rec.reads:
        return None, [], None
    try:
        with _quiet_export():
            ep = torch.export.export(_InMode(wrapper, _ReplayValueReads(rec.reads)), args, kwargs, strict=False)
    except Exception as e:
        return None, [], e
    lines = {}
    for v, line in rec.reads:
        lines.setdefault(line, repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "...")
    return ep, [f"specialised to the example inputs, guarded: {line} -> {v}" for line, v in lines.items()], None


def _called_linears(model: nn.Module, run: Any) -> list[str]:
    """Paths of the ``nn.Linear`` modules ``run()`` calls, in first-call order."""
    order: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod: nn.Module, inp: tuple, out: Any, name: str = name) -> None:
                if name not in order:
                    order.append(name)
            hooks.append(m.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return order


def capture(model: nn.Module, example_inputs: Inputs, copy_model: bool = True, form: str = "graph") -> Captured:
    """Capture ``model`` at the shapes of ``example_inputs``.

    Args:
        model: any ``nn.Module``; diffusers transformers are called with ``return_dict=False``.
        example_inputs: tuple (positional), dict (keyword) or tensor.
        copy_model: deep-copy first so the user's module and parameters are never touched.
        form: ``"graph"`` (torch.export; raises CaptureError when it cannot trace),
            ``"module"`` (the eager copy, no graph) or ``"auto"`` (graph, else module form,
            with the reason kept in ``Captured.graph_error``).

    Raises:
        TypeError / ValueError: inputs of the wrong kind or not matching the model.
        CaptureError: ``form="graph"`` and torch.export failed; the message names the construct,
            where it is and what to do.
    """
    if not isinstance(model, nn.Module):
        raise user_error(f"model must be a torch.nn.Module, got {type(model).__name__}",
                         "pass the transformer module itself (e.g. pipe.transformer)", TypeError)
    if form not in CAPTURE_FORMS:
        raise user_error(f"capture={form!r} is not a capture form", f"use one of {CAPTURE_FORMS}")
    args, kwargs = normalize_inputs(example_inputs)
    if not tensor_leaves(args, kwargs):
        raise user_error("example_inputs contain no tensor", "pass the tensors the model's forward takes", TypeError)
    src = copy.deepcopy(model) if copy_model else model
    src.eval()
    wrapper = FlatOutput(src)
    shapes = {k: tuple(t.shape) for k, t in tensor_leaves(args, kwargs)}
    try:
        with torch.no_grad():
            raw = wrapper.raw(*args, **kwargs)
    except Exception as e:  # the model itself rejects the inputs
        raise user_error(f"example inputs do not match {type(model).__name__}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} (inputs: {shapes})",
                         "pass the inputs the model's forward expects (names, shapes, dtypes); "
                         "check that model(*args, **kwargs) runs eagerly") from None
    structure = OutputStructure.of(raw)
    wrapper.structure = structure
    ref = structure.flatten(raw).detach()
    common = dict(model_class=type(model).__name__, args=args, kwargs=kwargs, reference_output=ref,
                  input_shapes=shapes, output_structure=structure)

    def run() -> None:
        with torch.no_grad():
            wrapper.raw(*args, **kwargs)

    graph_error = None
    if form in ("graph", "auto"):
        rewrites = _precompute_sincos_embeddings(src, run)
        ep, first = None, None
        try:
            with _quiet_export():
                ep = torch.export.export(wrapper, args, kwargs, strict=False)
        except Exception as e:
            first = e
        if ep is None and _is_data_dependent(str(first)):
            ep, spec_notes, _ = _export_specialised(wrapper, args, kwargs)
            rewrites += spec_notes  # on failure the first (unspecialised) error is the clearer one
        if ep is None:
            err = _explain_export_failure(model, first)
            if form == "graph":
                raise err from first
            graph_error = str(err).splitlines()[0] + " | " + str(err).splitlines()[1].strip()
        else:
            gm = ep.module()
            _tag_linears(gm)
            return Captured(gm=gm, form="graph", rewrites=rewrites, **common)
        # module form works on the user's code as written: undo the graph-only rewrites
        src = copy.deepcopy(model) if copy_model else model
        src.eval()
        wrapper = FlatOutput(src, structure)
    order = _called_linears(src, run)
    return Captured(gm=wrapper, form="module", module_linears=order, graph_error=graph_error, **common)


def _tag_linears(gm: fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.aten.linear.default:
            continue
        stack = n.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path, mtype = list(stack.values())[-1]
        w = n.args[1]
        is_linear = isinstance(mtype, type) and issubclass(mtype, nn.Linear) or "Linear" in str(mtype)
        if not is_linear or not isinstance(w, fx.Node) or w.op != "get_attr" or w.target != f"{path}.weight":
            continue  # functional linear or computed weight: left in full precision
        n.meta[PATH_KEY] = path[len(_PREFIX):] if path.startswith(_PREFIX) else path
        n.meta["lsgq_target"] = path
