# Config validation (before any job), the run naming scheme, and path helpers shared by every rule.

import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

import moe_adapters.config
from moe_adapters.config import ConfigError, config_hash, deep_merge, validate_config
from moe_adapters.protocol import load_protocol, order_datasets

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Jobs share the cores (the mini runs two at once on two): spinning OpenMP waits made small torch ops
# hundreds of times slower there, passive waits change no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    CFG = validate_config(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

R = CFG["results_dir"].rstrip("/")
DATA = CFG["data_root"].rstrip("/")
BENCH = CFG["benchmark"]
PROTO = load_protocol(BENCH, CFG["protocol"])
GENERIC = CFG["ddas"]["generic_dataset"]

# Every command reads the validated config from one content-addressed file, so a config change
# never leaves a job reading another config than the one Snakemake planned with.
EFF = f".snakemake/moe-adapters/config-{config_hash(CFG)}.yaml"
Path(EFF).parent.mkdir(parents=True, exist_ok=True)
if not Path(EFF).exists():
    Path(EFF).write_text(yaml.safe_dump(CFG, sort_keys=False))

RUN_RE = rf"{BENCH}_order[0-9]+(_[0-9]+shot)?"


wildcard_constraints:
    run=RUN_RE,
    k="[0-9]+",
    dataset="[A-Za-z0-9_-]+",


def run_name(order=None, shots=None):
    order = order or CFG["order"]
    shots = CFG["shots"] if shots is None else shots
    return f"{BENCH}_{order}" + (f"_{shots}shot" if shots else "")


def run_info(run):
    """Order, shots and datasets of a run name such as mtil_order2 or mtil_order1_5shot."""
    m = re.fullmatch(rf"{BENCH}_(order[0-9]+)(?:_([0-9]+)shot)?", run)
    if not m:
        raise WorkflowError(f"run {run!r} is not <benchmark>_<order>[_<k>shot] for benchmark {BENCH}")
    order, shots = m.group(1), int(m.group(2) or 0)
    if order not in PROTO["orders"]:
        raise WorkflowError(f"run {run}: order {order!r} is not in the {BENCH} protocol")
    if shots:
        validate_config({**config, "order": order, "shots": shots})
    return {"order": order, "shots": shots, "datasets": order_datasets(PROTO, order)}


def run_args(wildcards):
    info = run_info(wildcards.run)
    return f"--set order={info['order']} --set shots={info['shots']}"


def datasets(wildcards):
    return run_info(wildcards.run)["datasets"]


def data_meta(name):
    return f"{DATA}/{name}/meta.json"


def ae_dataset(run, k):
    names = run_info(run)["datasets"]
    k = int(k)
    if not 0 <= k <= len(names):
        raise WorkflowError(f"run {run} has autoencoders 0..{len(names)}, not {k}")
    return GENERIC if k == 0 else names[k - 1]


def task_dataset(run, k):
    names = run_info(run)["datasets"]
    k = int(k)
    if not 0 <= k < len(names):
        raise WorkflowError(f"run {run} has tasks 0..{len(names) - 1}, not {k}")
    return names[k]


def autoencoders(wildcards):
    n = len(datasets(wildcards))
    return [f"{R}/{wildcards.run}/autoencoders/ae_{k}.safetensors" for k in range(n + 1)]


def features(wildcards):
    return [f"{R}/{wildcards.run}/features/{d}.safetensors" for d in datasets(wildcards)]


def evaluations(wildcards):
    n = len(datasets(wildcards))
    return [f"{R}/{wildcards.run}/eval/task_{k}.json" for k in range(n)]


def task_checkpoints(wildcards):
    n = len(datasets(wildcards))
    return [f"{R}/{wildcards.run}/checkpoints/task_{k}.safetensors" for k in range(n)]


def config_hash_of(run):
    """The hash every output of a run records (the validated config with the run's order and shots)."""
    info = run_info(run)
    return config_hash(validate_config(deep_merge(CFG, {"order": info["order"], "shots": info["shots"]})))


def run_config_hash(wildcards):
    return config_hash_of(wildcards.run)


def run_results(run):
    """What a finished run offers a reader: tables (CSV, Markdown), cost, its config, and figures."""
    n = len(run_info(run)["datasets"])
    figures = [f"{R}/{run}/figures/{name}.png" for name in ("accuracy_matrix", "accuracy_per_dataset", "routing")]
    experts = [f"{R}/{run}/figures/experts_task_{k}.png" for k in range(n)]
    tables = [f"{R}/{run}_table.csv", f"{R}/{run}_table.md", f"{R}/{run}_metrics.json", f"{R}/{run}/costs.csv"]
    tables.append(f"{R}/{run}/config.yaml")
    return [*tables, *figures, *experts]


def ledger_runs():
    """The runs in the ledger: the config's own run and every other run whose table is present."""
    present = {p.name.removesuffix("_table.csv") for p in Path(R).glob("*_table.csv")}
    return sorted({run_name()} | {r for r in present if re.fullmatch(RUN_RE, r)})


# Beside the runs, not inside one: it spans every run of the benchmark present.
LEDGER = f"{R}/REPRODUCIBILITY.md"


def default_target():
    return [*run_results(run_name()), LEDGER, f"{R}/ledger.rst"]


# Reporting rules (matrix, cost, tables, figures, ledger) take their own code as input, so a change to it
# reruns them, and only them; training and evaluation rules do not depend on library files.
SRC = Path(moe_adapters.config.__file__).resolve().parent  # (the package itself may be a namespace here)
def code(*modules):
    """The package's own files a reporting rule runs, as inputs: editing one reruns just the rules that use it."""
    return [str(SRC / f"{m}.py") for m in modules]

# The CLI of the Python running Snakemake, so jobs use the same environment whatever PATH says.
MOE = f"{sys.executable} -m moe_adapters.cli"
