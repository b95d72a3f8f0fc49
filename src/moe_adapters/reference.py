"""The authors' released checkpoints in this project's format: `moe-adapters import-reference`.

What the reference saves (its training scripts, one process per task of the order):

- after task k, `{Dataset}.pth` = `{"state_dict": ...}` of the whole modified OpenAI CLIP: the frozen backbone
  under OpenAI's names, and per block of both towers the experts `...resblocks.{l}.adaptmlp_list.{e}.{down_proj,
  up_proj}.{weight,bias}` (nn.Linear layout, weight [out, in]) and the per-task routers and noise weights
  `...resblocks.{l}.router_list.{t}` / `...w_noise_list.{t}` of shape (width, experts), applied as `x @ W`;
  the visual tower's keys start with `visual.transformer.resblocks`, the text tower's with `transformer.resblocks`;
- beside them, entries without meaning here: `...resblocks.{l}.adaptmlp.*` (the last expert a second time, an
  alias), `...resblocks.{l}.ln_3.*` (a LayerNorm never used) and the `mean` / `std` buffers of the gating noise;
- after task k, `{Dataset}_autochooser.pth` = `{"state_dict": ...}` of the DDAS autoencoders as one ModuleList
  (`{j}.encoder.0.weight` ...): slot 0 the generic data's, slot j the j-th task's; slots above k+1 still hold the
  random initialisation of the first autoencoder job, carried from file to file.

This project's layout is the same up to names: an expert is two nn.Linear (`down_proj` [r, d], `up_proj` [d, r]),
a router and its noise weight are (width, experts) used as `c @ W`, so tensors are copied as they are. The frozen
set (activate-freeze) is not in the release (the reference keeps it in a separate frozen-list file): imported
checkpoints say so, are evaluated like any other, and refuse to be trained on. Nothing is unpickled: files are read
with `torch.load(weights_only=True)` only (checkpoint.safe_torch_load).

The backbone check: open_clip loads OpenAI weights by their own names (its CLIP uses OpenAI's names; its loader
only drops `input_resolution`, `context_length` and `vocab_size`) into a model of the configured architecture.
Doing the same with the release's backbone tensors, cast to the run's dtype, and comparing with the run's
backbone tensor by tensor is the same as comparing the loaded model's fingerprint with the run's (the fingerprint
hashes names, shapes, dtypes and values, and names, shapes and dtypes are the run's by construction), and it names
the first tensor that differs.

The release is read from any mix of: folders (searched recursively for `{Dataset}.pth` and
`{Dataset}_autochooser.pth`), those files given one by one, zip or tar archives holding them, and single `.pth`
files bundling several of them (a dict keyed by their names) or holding one model under another name (its task is
then read from its routers: the reference's routers of later tasks stay zero). What was found and what is missing
is said before anything is written; the import writes into a staging folder and moves the files in place only when
every file has passed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CheckpointError, safe_torch_load, save_autoencoder, save_task_checkpoint
from .config import IMPORTED_VARIANT, RunConfig, code_commit, config_hash
from .fsutil import write_json
from .model.clip import TOWERS, MoECLIP

REF_BLOCKS = {"visual": "visual.transformer.resblocks", "text": "transformer.resblocks"}
OUR_LAYERS = {"visual": "visual_moe", "text": "text_moe"}
IGNORED = re.compile(
    r"(?:visual\.)?transformer\.resblocks\.\d+\.(?:adaptmlp\.(?:down_proj|up_proj)\.(?:weight|bias)|ln_3\.(?:weight|bias)|mean|std)"
)
OPENAI_EXTRA = ("input_resolution", "context_length", "vocab_size")
AE_KEYS = ("encoder.0.weight", "encoder.0.bias", "decoder.0.weight", "decoder.0.bias")
AE_KEY = re.compile(r"(\d+)\.((?:encoder|decoder)\.0\.(?:weight|bias))")
CHOOSER = "_autochooser"
GENERIC_NAMES = ("tinyimagenet",)  # the reference's name of the generic data's autoencoder job
ORIGIN = "the authors' released checkpoints, imported by moe-adapters import-reference"


class ReleaseIncomplete(FileNotFoundError):
    """Files of the release that the imported run needs are not among those given."""


# ---------------------------------------------------------------- the key layout


def adapter_keys(model: MoECLIP) -> dict[str, str]:
    """The reference's name -> this project's name of every expert, router and noise tensor of `model`, in order
    (visual then text tower, block by block: experts, then routers, then noise weights)."""
    out: dict[str, str] = {}
    for tower in TOWERS:
        for layer, moe in enumerate(model.moe_layers(tower)):
            src, dst = f"{REF_BLOCKS[tower]}.{layer}", f"{OUR_LAYERS[tower]}.{layer}"
            for e in range(len(moe.experts)):
                for proj in ("down_proj", "up_proj"):
                    for p in ("weight", "bias"):
                        out[f"{src}.adaptmlp_list.{e}.{proj}.{p}"] = f"{dst}.experts.{e}.{proj}.{p}"
            for t in range(len(moe.routers)):
                out[f"{src}.router_list.{t}"] = f"{dst}.routers.{t}"
            for t in range(len(moe.noise)):
                out[f"{src}.w_noise_list.{t}"] = f"{dst}.noise.{t}"
    return out


def to_reference_layout(model: MoECLIP) -> dict[str, torch.Tensor]:
    """`model` as a state dict in the reference's key layout, with the entries the reference saves without meaning
    (alias of the last expert, unused ln_3, gating buffers): the inverse of the import, for tests and checks."""
    ours = model.state_dict()
    state = {k: v.detach().clone() for k, v in model.clip.state_dict().items()}
    state.update({ref: ours[our].detach().clone() for ref, our in adapter_keys(model).items()})
    for tower in TOWERS:
        for layer, moe in enumerate(model.moe_layers(tower)):
            src, last = f"{REF_BLOCKS[tower]}.{layer}", len(moe.experts) - 1
            for proj in ("down_proj", "up_proj"):
                for p in ("weight", "bias"):
                    state[f"{src}.adaptmlp.{proj}.{p}"] = state[f"{src}.adaptmlp_list.{last}.{proj}.{p}"]
            state[f"{src}.ln_3.weight"] = torch.ones(moe.width)
            state[f"{src}.ln_3.bias"] = torch.zeros(moe.width)
            state[f"{src}.mean"] = torch.tensor([0.0])
            state[f"{src}.std"] = torch.tensor([1.0])
    return state


def autochooser_layout(autoencoders: Sequence[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Autoencoders as the reference's ModuleList state dict (`{j}.encoder.0.weight` ...), for tests."""
    return {f"{j}.{k}": v.detach().clone() for j, ae in enumerate(autoencoders) for k, v in ae.state_dict().items()}


def check_layout(state: dict, expected: Sequence[str], where: str, what: str) -> None:
    """Refuse a state dict whose keys are not `expected` (plus the entries without meaning), naming the first key
    missing (in the model's order) or unexpected (in the file's order)."""
    have = set(state)
    missing = [k for k in expected if k not in have]
    if missing:
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: key layout does not match {what}: missing key {missing[0]!r}{more}")
    want = set(expected)
    unexpected = [k for k in state if k not in want and not IGNORED.fullmatch(k) and k not in OPENAI_EXTRA]
    if unexpected:
        more = f" ({len(unexpected) - 1} more unexpected)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: key layout does not match {what}: unexpected key {unexpected[0]!r}{more}")


def check_backbone(state: dict, model: MoECLIP, where: str) -> None:
    """The release's backbone must be the run's: every backbone tensor, cast to the run's dtype, equal to the run's
    (see the module's docstring: the same as loading them as open_clip loads OpenAI weights and comparing the
    fingerprints)."""
    b = model.backbone
    for name, ours in model.clip.state_dict().items():
        theirs = state[name]
        if tuple(theirs.shape) != tuple(ours.shape):
            raise CheckpointError(
                f"{where}: backbone tensor {name!r} has shape {tuple(theirs.shape)}, the run's backbone "
                f"({b.name}) has {tuple(ours.shape)}: the release was made on another architecture"
            )
        if not torch.equal(theirs.to(ours.dtype), ours):
            diff = (theirs.double() - ours.double()).abs().max().item()
            raise CheckpointError(
                f"{where}: backbone tensor {name!r} differs from the run's backbone ({b.name}, weights "
                f"{b.pretrained}, fingerprint {model.fingerprint[:12]}...; max |difference| {diff:.3g}): the release "
                "was made on other backbone weights, or model.pretrained points at weights other than OpenAI's"
            )


def map_task_state(state: dict, model: MoECLIP, where: str) -> None:
    """Check a task file's layout and backbone, then load its experts, routers and noise weights into `model`."""
    m, spec = model, model.spec
    what = (
        f"the run's MoE CLIP ({m.backbone.name}; {spec.num_experts} experts of bottleneck {spec.bottleneck} and "
        f"{spec.num_routers} routers per block, {len(m.visual_moe)} visual and {len(m.text_moe)} text blocks)"
    )
    mapping = adapter_keys(model)
    check_layout(state, [*model.clip.state_dict(), *mapping], where, what)
    check_backbone(state, model, where)
    own = model.state_dict()
    mapped = {}
    for ref, our in mapping.items():
        t = state[ref]
        if tuple(t.shape) != tuple(own[our].shape):
            raise CheckpointError(f"{where}: {ref!r} has shape {tuple(t.shape)}, {what} expects {tuple(own[our].shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: {ref!r} is a {t.dtype} tensor, not floating point")
        mapped[our] = t.to(own[our].dtype)
    model.load_state_dict(mapped, strict=False)


def autochooser_slots(state: dict, needed: int, dims: tuple[int, int], where: str) -> tuple[dict[int, dict], list[int]]:
    """Autoencoders 0..needed-1 of an autochooser file, shape-checked against (input dim, code dim); the slots
    above them (the reference's ModuleList may be longer) are returned apart, unused."""
    slots: dict[int, dict] = {}
    for key, t in state.items():
        m = AE_KEY.fullmatch(key)
        if m:
            slots.setdefault(int(m[1]), {})[m[2]] = t
    what = f"the run's DDAS autoencoders 0..{needed - 1} (input {dims[0]}, code {dims[1]})"
    check_layout(state, [f"{j}.{k}" for j in range(needed) for k in AE_KEYS] + [k for k in state if AE_KEY.fullmatch(k)],
                 where, what)
    d, c = dims
    shapes = {"encoder.0.weight": (c, d), "encoder.0.bias": (c,), "decoder.0.weight": (d, c), "decoder.0.bias": (d,)}
    for j in range(needed):
        for k, shape in shapes.items():
            if tuple(slots[j][k].shape) != shape:
                raise CheckpointError(
                    f"{where}: '{j}.{k}' has shape {tuple(slots[j][k].shape)}, {what} expects {shape} "
                    "(another DDAS feature extractor or code size?)"
                )
    return {j: slots[j] for j in range(needed)}, sorted(j for j in slots if j >= needed)


def inferred_task(state: dict) -> int | None:
    """The task after which a whole-model state dict was saved: the last router (or noise weight) that is not zero."""
    found = [
        int(m[1])
        for k, v in state.items()
        if (m := re.fullmatch(r"(?:visual\.)?transformer\.resblocks\.\d+\.(?:router_list|w_noise_list)\.(\d+)", k))
        and bool(v.abs().sum() > 0)
    ]
    return max(found) if found else None


# ---------------------------------------------------------------- finding the release's files


@dataclass(frozen=True)
class Source:
    """One file of the release: its name in the release, where it is, and how to read it."""

    name: str
    where: str  # for people: a path, ARCHIVE!MEMBER or BUNDLE[KEY]
    path: Path  # the file on disk (the archive or the bundle for those)
    member: str | None = None
    key: str | None = None
    note: str = ""


@dataclass
class Release:
    """The files found: task checkpoints by task, autochooser files by the task after which they were saved (-1:
    before the first task, the generic data's autoencoder only), and files that are none of these."""

    tasks: dict[int, Source] = field(default_factory=dict)
    choosers: dict[int, Source] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def _is_torch_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())


def _archive_members(path: Path) -> list[str] | None:
    """The members of a zip or tar archive of the release, or None if `path` is no such archive (a torch file is a
    zip too). Tar first: a tar whose last member is a torch file ends like a zip."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            return [m.name for m in t.getmembers() if m.isfile()]
    if zipfile.is_zipfile(path):
        if _is_torch_zip(path):
            return None
        with zipfile.ZipFile(path) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    return None


class _Finder:
    def __init__(self, datasets: Sequence[str], generic: str):
        self.datasets = list(datasets)
        self.index = {d.lower(): i for i, d in enumerate(self.datasets)}
        self.generic = {generic.lower(), *GENERIC_NAMES}
        self.release = Release()
        self.bundles: dict[Path, dict] = {}

    def role(self, name: str) -> tuple[str, int] | None:
        base = Path(name).name
        if not base.lower().endswith(".pth"):
            return None
        stem = base[: -len(".pth")].lower()
        if stem.endswith(CHOOSER):
            stem = stem[: -len(CHOOSER)]
            if stem in self.index:
                return "chooser", self.index[stem]
            return ("chooser", -1) if stem in self.generic else None
        return ("task", self.index[stem]) if stem in self.index else None

    def add(self, role: tuple[str, int] | None, src: Source) -> None:
        if role is None:
            self.release.ignored.append(src.where)
            return
        kind, i = role
        table = self.release.tasks if kind == "task" else self.release.choosers
        if i in table:
            raise CheckpointError(f"{src.name} was given twice: {table[i].where} and {src.where}; give one of them")
        table[i] = src

    def scan(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                if f.suffix.lower() == ".pth":
                    self.add(self.role(f.name), Source(f.name, str(f), f))
                else:
                    self.release.ignored.append(str(f))
            return
        members = _archive_members(path)
        if members is not None:
            for m in members:
                role = self.role(m)
                if role is None:
                    self.release.ignored.append(f"{path}!{m}")
                else:
                    self.add(role, Source(Path(m).name, f"{path}!{m}", path, member=m))
            return
        role = self.role(path.name)
        if role is not None:
            self.add(role, Source(path.name, str(path), path))
            return
        self.inspect(path)

    def inspect(self, path: Path) -> None:
        """A single .pth under a name that is not the reference's: a bundle of its files, or one model."""
        obj = safe_torch_load(path)
        if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()) and "state_dict" not in obj:
            entries = {k: v for k, v in obj.items() if isinstance(k, str)}
            named = {k: self.role(k if k.lower().endswith(".pth") else f"{k}.pth") for k in entries}
            if any(named.values()):
                self.bundles[path] = obj
                for k, role in named.items():
                    name = k if k.lower().endswith(".pth") else f"{k}.pth"
                    if role is None:
                        self.release.ignored.append(f"{path}[{k}]")
                    else:
                        self.add(role, Source(name, f"{path}[{k}]", path, key=k))
                return
        state = _state_dict(obj, str(path))
        if "visual.conv1.weight" in state:
            t = inferred_task(state)
            if t is None or t >= len(self.datasets):
                raise CheckpointError(
                    f"{path} holds one model under a name that is not the reference's ({{Dataset}}.pth), and its "
                    "routers do not tell which task it was saved after: rename it to its dataset's name"
                )
            self.bundles[path] = {"": obj}
            self.add(("task", t), Source(f"{self.datasets[t]}.pth", str(path), path, key="",
                                         note=f"task read from its routers (0..{t} trained)"))
            return
        raise CheckpointError(
            f"{path} is not a file of the reference's release: neither {{Dataset}}.pth nor {{Dataset}}{CHOOSER}.pth, "
            "nor an archive or a bundle of them; rename it after the task it was saved after"
        )


def find_release(paths: Sequence[str | Path], datasets: Sequence[str], generic: str) -> tuple[Release, dict]:
    finder = _Finder(datasets, generic)
    for p in paths:
        finder.scan(Path(p))
    return finder.release, finder.bundles


def _state_dict(obj, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where} holds no state dict (found {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None and bad not in OPENAI_EXTRA:
        raise CheckpointError(f"{where}: entry {bad!r} is not a tensor ({type(obj[bad]).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _sha256(path: Path) -> str:
    from .data.prepared import sha256_file

    return sha256_file(path)


@contextmanager
def _on_disk(src: Source) -> Iterator[Path]:
    """A file on disk holding the source (an archive member is extracted to a temporary file first)."""
    if src.member is None:
        yield src.path
        return
    with tempfile.TemporaryDirectory(prefix="moe-adapters-import-") as tmp:
        out = Path(tmp) / Path(src.member).name
        if tarfile.is_tarfile(src.path):
            with tarfile.open(src.path) as t:
                f = t.extractfile(src.member)
                if f is None:
                    raise CheckpointError(f"{src.where} is not a regular file")
                with f, open(out, "wb") as g:
                    shutil.copyfileobj(f, g, 1 << 22)
        else:
            with zipfile.ZipFile(src.path) as z, z.open(src.member) as f, open(out, "wb") as g:
                shutil.copyfileobj(f, g, 1 << 22)
        yield out


def read_source(src: Source, bundles: dict, hashes: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a source, read without executing code, and the SHA-256 of the file that holds it."""
    if src.key is not None:
        if src.path not in hashes:
            hashes[src.path] = _sha256(src.path)
        return _state_dict(bundles[src.path][src.key], src.where), hashes[src.path]
    with _on_disk(src) as f:
        sha = _sha256(f)
        try:
            obj = safe_torch_load(f)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(str(f), src.where)) from None
    return _state_dict(obj, src.where), sha


# ---------------------------------------------------------------- the import


@dataclass
class ImportReport:
    run: str
    folder: Path
    lines: list[str]

    def text(self) -> str:
        return "\n".join(self.lines)


def _fmt_source(s: Source) -> str:
    return s.where + (f" ({s.note})" if s.note else "")


def release_summary(rc: RunConfig, release: Release) -> tuple[list[str], list[str]]:
    """(lines for people, what is missing) of the files found."""
    names = rc.datasets
    T = len(names)
    lines, missing = [], []
    for k, d in enumerate(names):
        s = release.tasks.get(k)
        lines.append(f"  task {k:>2}       {d:<14} {d + '.pth':<28} " + (f"found: {_fmt_source(s)}" if s else "MISSING"))
        if s is None:
            missing.append(f"{d}.pth")
    for i in sorted({*release.choosers, *range(T)}):
        s = release.choosers.get(i)
        label = "before task 0" if i < 0 else f"after task {i}"
        name = s.name if s else f"{names[i]}{CHOOSER}.pth"
        lines.append(f"  DDAS {label:<14} {name:<28} " + (f"found: {_fmt_source(s)}" if s else "not given"))
    for k in range(T + 1):
        if not any(i >= k - 1 for i in release.choosers):  # autoencoder k is trained in the files after task k-1
            missing.append(
                f"autoencoder {k}: an autochooser file saved after task {max(k - 1, 0)} or later "
                f"({names[-1]}{CHOOSER}.pth holds every autoencoder trained)"
            )
    for w in release.ignored:
        lines.append(f"  not used: {w}")
    return lines, missing


def _ae_digest(slot: dict) -> str:
    h = hashlib.sha256()
    for k in AE_KEYS:
        h.update(slot[k].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def import_reference(rc: RunConfig, paths: Sequence[str | Path], log=print) -> ImportReport:
    """Import the authors' files for run `rc` (a `<setting>-reference` run): find, check, convert, write."""
    from .model.clip import BackboneSpec, build_model
    from .model.ddas import Autoencoder, build_feature_extractor, feature_dim
    from .model.moe import MoESpec
    from .steps.specs import autoencoder_dataset, image_size

    if rc.variant != IMPORTED_VARIANT:
        raise ValueError(f"run {rc.run_name} is not an imported run (<setting>-{IMPORTED_VARIANT})")
    run, names, T = rc.run_name, rc.datasets, len(rc.datasets)
    release, bundles = find_release(paths, names, rc.ddas.generic_dataset)
    lines, missing = release_summary(rc, release)
    folder = Path(rc.results_dir) / run
    head = f"{rc.setting}: the authors' release for {run} ({T} tasks; into {folder})"
    if missing:
        raise ReleaseIncomplete(
            "\n".join([head, *lines, "missing: " + "; ".join(missing),
                       "nothing was written: give the folder (or archive) that holds every file, see README, "
                       "'Released checkpoints'"])
        )
    log("\n".join([head, *lines]))

    backbone = BackboneSpec(rc.model.name, rc.model.quick_gelu, rc.model.pretrained)
    model = build_model(backbone, MoESpec.from_model(rc.model, T), init_seed=0)
    model.set_trainable(None)
    kind = rc.ddas.feature
    extractor = build_feature_extractor("alexnet_random" if kind == "alexnet" else kind, pixel_size=rc.ddas.pixel_size)
    dims = (feature_dim(extractor, image_size(rc.model.name)), rc.ddas.code_dim)
    common = {"commit": code_commit(), "config_hash": config_hash(rc), "step": "import-reference"}
    staging = folder / ".import-staging"
    shutil.rmtree(staging, ignore_errors=True)
    hashes: dict = {}
    record = {"run": run, "setting": rc.setting, "origin": ORIGIN, "files": [], "not_used": release.ignored}
    try:
        for k, d in enumerate(names):
            src = release.tasks[k]
            state, sha = read_source(src, bundles, hashes)
            map_task_state(state, model, src.where)
            imported = {"origin": ORIGIN, "file": src.name, "where": src.where, "sha256": sha}
            save_task_checkpoint(staging / "checkpoints" / f"task_{k}.safetensors", model, task=k, dataset=d,
                                 counts=None, extra={"imported": imported, **common}, frozen_known=False)
            record["files"].append({"role": f"task {k}", **imported})
            log(f"  task {k:>2} {d}: checked (layout, backbone), written")
            del state
        trained: dict[int, tuple[dict, str, str]] = {}  # slot -> (tensors, digest, file)
        initial: dict[int, tuple[dict, str, str]] = {}
        for i in sorted(release.choosers):
            src = release.choosers[i]
            state, sha = read_source(src, bundles, hashes)
            slots, extra_slots = autochooser_slots(state, T + 1, dims, src.where)
            record["files"].append({"role": f"autoencoders saved {'before task 0' if i < 0 else f'after task {i}'}",
                                    "origin": ORIGIN, "file": src.name, "where": src.where, "sha256": sha,
                                    "unused_slots": extra_slots})
            for j, slot in slots.items():
                table = trained if j <= i + 1 else initial
                dig = _ae_digest(slot)
                if j in table and table[j][1] != dig:
                    state_word = "trained" if table is trained else "untrained"
                    raise CheckpointError(
                        f"autoencoder {j} ({state_word}) differs between {table[j][2]} and {src.where}: the reference "
                        "trains each autoencoder once and carries it unchanged, so these files are not of one run"
                    )
                if j not in table:
                    table[j] = ({n: v.to(torch.float32) for n, v in slot.items()}, dig, f"{src.name} (sha256 {sha})")
            del state, slots
        for j in range(T + 1):
            ae = Autoencoder(*dims)
            ae.load_state_dict(trained[j][0])
            init = None
            if j < 2:  # the evaluation after task 0 already has autoencoders 0 and 1 trained
                init_note = "never used (autoencoders 0 and 1 are trained before the first evaluation)"
            elif j in initial:
                init = Autoencoder(*dims)
                init.load_state_dict(initial[j][0])
                init_note = initial[j][2]
            else:
                init_note = "this project's seeded initialisation (no file given holds it untrained)"
            save_autoencoder(
                staging / "autoencoders" / f"ae_{j}.safetensors", ae, index=j, trained=True, initial=init,
                extra={"dataset": autoencoder_dataset(rc, j), "feature": kind,
                       "imported": {"origin": ORIGIN, "trained_from": trained[j][2], "initial_from": init_note},
                       **common},
            )
            log(f"  autoencoder {j:>2}: trained weights from {trained[j][2].split(' ')[0]}; untrained: {init_note}")
        for sub in ("checkpoints", "autoencoders"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for f in sorted((staging / sub).iterdir()):
                f.replace(folder / sub / f.name)
        write_json(folder / "imported.json", record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    done = (f"imported {T} task checkpoints and {T + 1} autoencoders into {folder} (frozen sets: not in the release; "
            f"these checkpoints are for evaluation). Next: snakemake {rc.results_dir.rstrip('/')}/{run}_table.csv, or "
            f"dvc repro {run}")
    log(done)
    return ImportReport(run, folder, [head, *lines, done])
