"""Which tensors would be in host memory on a GPU machine, and whether any reaches a collective.

NCCL takes only tensors on the process's GPU; gloo on a CPU takes anything, so a tensor made
without `device=` passes every CPU test and breaks the first GPU run. `HostTensors` follows
tensors as a GPU run would place them: host tensors are those made by a factory without a
device, moved by `.cpu()`, read by `torch.load`, and whatever is computed from host tensors
alone; `.to(device)` with a device places a tensor on the process's device (on this CPU the two
are the same memory, which is why the placement is followed rather than read off the tensor).
Every tensor handed to a torch.distributed collective is checked.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

FACTORIES = {
    "tensor",
    "as_tensor",
    "from_numpy",
    "frombuffer",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "linspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
}
COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "gather",
    "scatter",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "send",
    "recv",
)
OBJECT_COLLECTIVES = (
    "gather_object",
    "all_gather_object",
    "broadcast_object_list",
    "scatter_object_list",
)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class HostTensors(TorchFunctionMode):
    """Active (a `with` block): follows placement, checks the collectives called meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.host = WeakIdKeyDictionary()  # by identity: a tensor's == is elementwise
        self.calls: dict[str, int] = {}
        self.violations: list[str] = []
        self._saved: dict[str, Any] = {}

    # placement ---------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        inputs = _tensors(list(args)) + _tensors(kwargs)
        if name in FACTORIES and not any(isinstance(a, torch.Tensor) for a in args[:1]):
            host = kwargs.get("device") is None
        elif name in ("cpu", "numpy"):
            host = True
        elif name == "cuda" or (name == "to" and self._names_a_device(args[1:], kwargs)):
            host = False
        elif name.endswith("_") or (inputs and out is inputs[0]):
            return out  # in place: the tensor stays where it is
        else:  # computed: on the host only if every input with elements is
            placed = [t for t in inputs if t.dim() > 0 and t not in self.host]
            host = bool(inputs) and any(t in self.host for t in inputs) and not placed
        for tensor in _tensors(out):
            if host:
                self.host[tensor] = True
            else:
                self.host.pop(tensor, None)
        return out

    @staticmethod
    def _names_a_device(args: tuple, kwargs: dict) -> bool:
        if kwargs.get("device") is not None:
            return True
        return any(isinstance(a, str | torch.device | torch.Tensor | int) for a in args[:1])

    # collectives ---------------------------------------------------------------------------

    def __enter__(self) -> HostTensors:
        for name in COLLECTIVES + OBJECT_COLLECTIVES:
            original = getattr(dist, name)
            self._saved[name] = original
            setattr(dist, name, self._checked(name, original))
        self._saved["load"] = torch.load
        torch.load = self._loading(torch.load)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.load = self._saved.pop("load")
        for name, original in self._saved.items():
            setattr(dist, name, original)
        self._saved.clear()

    def _checked(self, name: str, original: Any) -> Any:
        def collective(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name not in OBJECT_COLLECTIVES:
                for tensor in _tensors(list(args)) + _tensors(kwargs):
                    if tensor in self.host:
                        where = "".join(traceback.format_stack(limit=4)[:-1])
                        shape = tuple(tensor.shape)
                        self.violations.append(f"{name} got a host tensor {shape}\n{where}")
            return original(*args, **kwargs)

        return collective

    def _loading(self, load: Any) -> Any:
        def loaded(*args: Any, **kwargs: Any) -> Any:
            state = load(*args, **kwargs)
            for tensor in _tensors(state):
                self.host[tensor] = True
            return state

        return loaded
