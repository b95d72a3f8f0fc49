"""A job's process start-up: import torchvision and open_clip without loading torch._dynamo.

Importing torch, torchvision and open_clip costs a compute job about 4 s on a 2-core CPU, and half of it is
torch._dynamo (the compiler), which no evaluation, feature, data or backbone step uses:
- torchvision 0.29 loads it for one name, `torch._dynamo.utils.is_compile_supported`, read by
  `torchvision.ops.roi_align` only when called (pytorch/vision#8436);
- open_clip imports timm, which open_clip itself treats as optional (its timm_model.py and transform.py fall back
  when `import timm` fails) and which only open_clip's timm-tower models use; timm loads torch._dynamo through
  `torch.compiler.disable` decorators at import.

`defer_dynamo()` installs an import hook, once, in a process that has imported none of these yet (the CLI's
`main`, that is each job). While torchvision's package runs its imports, `torch._dynamo.utils` is a stand-in whose
`is_compile_supported` imports the real function on its first call; while open_clip's runs, `import timm` fails as
open_clip expects when timm is absent. Both stand-ins are gone when those imports return: a later
`import torch._dynamo` or `import timm` (an optimizer's constructor imports torch._dynamo) loads the real module.
No tensor operation changes; only which modules a process loads, and when. If torchvision's import ever fails
under the stand-in (a version that reads more of torch._dynamo), it is run again without it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_WATCHED = ("torchvision", "open_clip")
_LOADED = ("torchvision", "open_clip", "timm", "torch._dynamo")


def _is_compile_supported(device_type):
    """torchvision's roi_align asks this at call time: the real answer, from the real module."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


class _StandIns:
    """The modules a watched package's import sees in place of the real ones, for as long as it runs."""

    def __init__(self, name: str):
        if name == "torchvision":
            dynamo = types.ModuleType("torch._dynamo")
            dynamo.__path__ = []  # a package, so that `torch._dynamo.utils` resolves to the entry below
            utils = types.ModuleType("torch._dynamo.utils")
            utils.is_compile_supported = _is_compile_supported
            dynamo.utils = utils
            self.modules = {"torch._dynamo": dynamo, "torch._dynamo.utils": utils}
        else:  # open_clip: `import timm` raises ImportError, open_clip's own fallback
            self.modules = {"timm": None}

    def __enter__(self):
        self.installed = {k: v for k, v in self.modules.items() if k not in sys.modules}
        sys.modules.update(self.installed)
        return self

    def __exit__(self, *exc):
        for k, v in self.installed.items():
            if k in sys.modules and sys.modules[k] is v:
                del sys.modules[k]
        return False


class _Loader(importlib.abc.Loader):
    def __init__(self, name: str, loader):
        self.name, self.loader = name, loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with _StandIns(self.name):
                self.loader.exec_module(module)
        except (ImportError, AttributeError):
            if self.name != "torchvision":
                raise
            for k in [k for k in sys.modules if k.startswith("torchvision.")]:
                del sys.modules[k]
            self.loader.exec_module(module)  # as without the hook


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(fullname, spec.loader)
        return spec


_FINDER = _Finder()


def defer_dynamo() -> bool:
    """Install the hook where nothing it concerns is imported yet; True if it was installed."""
    if any(name in sys.modules for name in _LOADED) or _FINDER in sys.meta_path:
        return False
    sys.meta_path.insert(0, _FINDER)
    return True
