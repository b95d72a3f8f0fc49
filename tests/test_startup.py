"""A job's start-up without torch._dynamo (moe_adapters.startup): what it loads, what it leaves, what it computes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from moe_adapters.startup import defer_dynamo

FORWARD = """
import torch
from moe_adapters.model.clip import BackboneSpec, build_model
from tests.conftest import moe_spec, trained_looking
torch.set_num_threads(1)
model = trained_looking(build_model(BackboneSpec("tiny-clip", True, None), moe_spec(), init_seed=0)).eval()
g = torch.Generator().manual_seed(0)
images = torch.randn(3, 3, 32, 32, generator=g)
with torch.no_grad():
    out = model.encode_image(images, route=0)
"""


def _python(cwd, *parts: str) -> dict:
    code = "\n".join(textwrap.dedent(p) for p in parts)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_job_imports_the_model_without_dynamo_or_timm_and_computes_the_same():
    root = Path(__file__).resolve().parents[1]
    got = _python(
        root,
        """
        import json, sys
        from moe_adapters.startup import defer_dynamo
        installed = defer_dynamo()
        again = defer_dynamo()
        import moe_adapters.model.clip, moe_adapters.model.ddas, moe_adapters.data.transforms
        loaded = {m: m in sys.modules for m in ("torchvision", "open_clip", "torch._dynamo", "timm")}
        """,
        FORWARD,
        """
        ra = sys.modules["torchvision.ops.roi_align"]
        supported = ra.is_compile_supported("cpu")  # the stand-in asks the real module, now
        dynamo_after = "torch._dynamo" in sys.modules and hasattr(sys.modules["torch._dynamo"], "optimize")
        import timm  # importable again once open_clip's import is over
        print(json.dumps({"installed": installed, "again": again, "loaded": loaded, "supported": supported,
                          "dynamo_after": dynamo_after, "timm": timm.__name__, "out": out.flatten().tolist()}))
        """,
    )
    assert got["installed"] is True and got["again"] is False
    assert got["loaded"] == {"torchvision": True, "open_clip": True, "torch._dynamo": False, "timm": False}
    from torch._dynamo.utils import is_compile_supported

    assert got["supported"] == is_compile_supported("cpu") and got["dynamo_after"] is True
    assert got["timm"] == "timm"
    # the same image features, bit for bit, as this process computes with everything imported eagerly
    threads, ns = torch.get_num_threads(), {}
    try:
        exec(FORWARD, ns)
    finally:
        torch.set_num_threads(threads)
    out = ns["out"]
    assert got["out"] == out.flatten().tolist()


def test_nothing_is_installed_where_torchvision_is_already_imported():
    assert "torchvision" in sys.modules  # this process: the conftest's imports
    assert defer_dynamo() is False


def test_a_torchvision_that_reads_more_of_dynamo_is_imported_again_without_the_stand_in(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("from torch._dynamo.utils import is_compile_supported, dynamo_timed\nOK = 1\n")
    got = _python(
        tmp_path,
        f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from moe_adapters.startup import defer_dynamo
        assert defer_dynamo()
        import torchvision
        print(json.dumps({{"file": torchvision.__file__, "ok": torchvision.OK,
                          "real": hasattr(sys.modules["torch._dynamo"], "optimize")}}))
        """,
    )
    assert got == {"file": str(fake / "__init__.py"), "ok": 1, "real": True}
