"""``Module`` and ``Parameter``: the containers of learnable state, with PyTorch's layout.

A ``Module`` owns three ordered registries, filled by plain attribute assignment exactly as in
``torch.nn.Module``:

* ``_parameters``: the ``Parameter`` objects assigned to it (``self.weight = Parameter(...)``);
* ``_buffers``: state that is not learned but belongs to the model (BatchNorm's running
  statistics), added with ``register_buffer``;
* ``_modules``: its sub-modules (``self.fc = Linear(...)``).

Names in ``state_dict()`` join the attribute path with dots (``"encoder.0.weight"``), in the
same order as PyTorch (a module's own parameters, then its own buffers, then each child's, in
registration order), so a PyTorch ``state_dict`` converted to NumPy loads unchanged::

    model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..autograd import Tensor
from ..backend import device_of, get_array_module, to_device

__all__ = ["Module", "Parameter", "IncompatibleKeys"]


class Parameter(Tensor):
    """A Tensor that is a learnable parameter of a ``Module`` (it requires grad by default).

    ``Parameter(data)`` takes an ndarray (used as it is, no copy, dtype kept), a ``Tensor``
    (its array is shared, as ``torch.nn.Parameter`` shares storage) or anything
    ``minissl.tensor`` accepts (Python floats become float32). Assigning a Parameter to a
    Module attribute registers it.
    """

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            arr = data.data
        elif isinstance(data, np.ndarray) or get_array_module(data) is not np:
            arr = data
        else:
            from ..autograd import tensor
            arr = tensor(data).data
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"Parameter: only floating arrays can require grad, got {arr.dtype}")
        super().__init__(arr, bool(requires_grad))

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict`` did not match (as PyTorch returns it)."


def _host_copy(array):
    """A NumPy copy of an array on any device, never a view of the live state."""
    a = to_device(array, "cpu")
    return np.array(a, copy=True) if a is array else a


def _same_kind(src, dst):
    """Whether an array of dtype ``src`` may load into a tensor of dtype ``dst``: floats into
    floats (cast, as PyTorch does), integers into integers, bools into bools; never an int8
    into a weight, a complex or a string."""
    kind = {"f": "f", "i": "iu", "u": "iu", "b": "b"}.get(np.dtype(dst).kind, "")
    return np.dtype(src).kind in kind


class Module:
    """Base class of every layer and model: subclass it, assign parameters and sub-modules in
    ``__init__`` and define ``forward``; calling the module calls ``forward``.

    >>> class Net(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x).relu()
    """

    def __init__(self):
        # object.__setattr__ skips our own __setattr__, which needs these dicts to exist.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called "
                                 f"(call super().__init__() first in {type(self).__name__})")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            self._forget(name, keep="_parameters")
            params[name] = value    # replaces in place: an existing name keeps its position
        elif isinstance(value, Module):
            self._forget(name, keep="_modules")
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as parameter {name!r} "
                                f"of {type(self).__name__} (a Parameter or None is expected)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as child module "
                                f"{name!r} of {type(self).__name__} (a Module or None expected)")
            modules[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign a {type(value).__name__} as buffer {name!r} of "
                                f"{type(self).__name__} (a Tensor or None is expected)")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name, keep=None):
        """Remove ``name`` from the instance dict and every registry but ``keep``."""
        self.__dict__.pop(name, None)
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry != keep:
                getattr(self, registry).pop(name, None)
        if keep != "_buffers":
            self._non_persistent.discard(name)

    def __getattr__(self, name):
        # Only called when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._parameters or name in self._buffers or name in self._modules:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def register_parameter(self, name, param):
        """Add a Parameter (or None, a declared-but-absent parameter such as a disabled bias)."""
        self._check_name(name, "register_parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self._forget(name, keep="_parameters")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Add a buffer: model state saved in ``state_dict`` (unless ``persistent=False``) and
        moved by ``to()``, but not returned by ``parameters()`` and never trained."""
        self._check_name(name, "register_buffer")
        if isinstance(tensor, Parameter):
            tensor = Tensor(tensor.data)    # a buffer is never trained
        elif tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(get_array_module(tensor).asarray(tensor))
        self._forget(name, keep="_buffers")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        """Register a child module under ``name`` (what attribute assignment does)."""
        self._check_name(name, "add_module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got "
                            f"{type(module).__name__}")
        self._forget(name, keep="_modules")
        self._modules[name] = module

    def _check_name(self, name, fn):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{fn}: call Module.__init__() before registering {name!r}")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{fn}: name must be a non-empty string without '.', got {name!r}")

    # ----------------------------------------------------------------- traversal
    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, each module once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named_members(self, registry, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for n, t in getattr(m, registry).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mname}.{n}" if mname else n), t

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) pairs; a parameter shared by two modules is listed once."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(m)`` on every descendant, children first, then on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------- state
    def _state_items(self, prefix=""):
        """(name, Tensor) of parameters and persistent buffers in PyTorch's order: each
        module's own parameters, then its own buffers, then its children's, recursively."""
        for n, p in self._parameters.items():
            if p is not None:
                yield prefix + n, p
        for n, b in self._buffers.items():
            if b is not None and n not in self._non_persistent:
                yield prefix + n, b
        for n, m in self._modules.items():
            if m is not None:
                yield from m._state_items(prefix + n + ".")

    def state_dict(self):
        """An ordered dict name -> NumPy array: host COPIES of every parameter and persistent
        buffer (later training does not change a state_dict already taken)."""
        return OrderedDict((n, _host_copy(t.data)) for n, t in self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy the arrays of ``state_dict`` (name -> ndarray or Tensor) into this module.

        Each value is cast to its parameter's dtype and moved to its device, and copied in
        place (so optimisers and views that hold the parameter keep seeing it). Every key and
        shape is checked before anything is copied, so a failed load changes nothing: a shape
        mismatch raises ValueError naming the key and both shapes (whatever ``strict``); with
        ``strict=True`` missing or unexpected keys raise ValueError listing them all. Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        if strict and (missing or unexpected):
            if missing:
                errors.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                errors.append(f"unexpected keys: {', '.join(unexpected)}")
        updates = []
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            arr = v.data if isinstance(v, Tensor) else v
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                arr = np.asarray(arr)
            if tuple(arr.shape) != t.shape:
                errors.append(f"size mismatch for {k}: checkpoint shape {tuple(arr.shape)}, "
                              f"model shape {t.shape}")
                continue
            if not _same_kind(arr.dtype, t.dtype):
                errors.append(f"dtype mismatch for {k}: checkpoint dtype {arr.dtype}, model "
                              f"dtype {t.dtype}")
                continue
            updates.append((t, arr))
        if errors:
            raise ValueError(f"load_state_dict: error(s) loading the state of "
                             f"{type(self).__name__}:\n  " + "\n  ".join(errors))
        for t, arr in updates:
            xp = get_array_module(t.data)
            src = to_device(arr, device_of(t.data)) if get_array_module(arr) is not xp \
                else arr
            if not t.data.flags.writeable:
                t.data = t.data.copy()
            t.data[...] = xp.asarray(src).astype(t.data.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- modes, devices
    def train(self, mode=True):
        """Set training mode (BatchNorm uses batch statistics, Dropout drops) recursively."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Drop every parameter's gradient (``.grad = None``; zeros with set_to_none=False)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = get_array_module(p.grad).zeros_like(p.grad)
        return self

    def _convert(self, fn, floating_only):
        """Replace the array of every parameter, buffer and gradient by ``fn(array)``."""
        done = set()
        for m in self.modules():
            for registry in (m._parameters, m._buffers):
                for t in registry.values():
                    if t is None or id(t) in done:
                        continue
                    done.add(id(t))
                    if floating_only and t.data.dtype.kind != "f":
                        continue
                    t.data = fn(t.data)
                    if t.grad is not None:
                        t.grad = fn(t.grad)
        return self

    def to(self, device=None, dtype=None):
        """Move parameters, buffers and gradients to ``device`` ("cpu" or "cuda") and/or cast
        the floating ones to ``dtype``, in place; returns self. ``m.to(np.float64)`` works
        too, as in PyTorch."""
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        if device is not None:
            if device not in ("cpu", "cuda"):
                raise ValueError(f"Module.to: unknown device {device!r} (expected 'cpu' or "
                                 "'cuda')")
            self._convert(lambda a: to_device(a, device), floating_only=False)
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt.kind != "f":
                raise TypeError(f"Module.to: dtype must be floating, got {dt}")
            self._convert(lambda a: a.astype(dt, copy=False), floating_only=True)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # ----------------------------------------------------------------- calling, printing
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        """The text inside the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        name = type(self).__name__
        if not self._modules:
            return f"{name}({extra})"
        return name + "(\n  " + "\n  ".join(lines) + "\n)"

