"""What a reader gets from the (reduced) mini benchmark: tables checked against the matrix they came from,
metrics.json, cost, figures, the ledger, and the HTML report, opened in headless Chromium."""

import csv
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from moe_adapters.metrics import mtil_metrics, read_matrix_csv, round1
from moe_adapters.reporting.costs import read_costs
from moe_adapters.reporting.tables import zero_shot_matrix
from moe_adapters.steps.record import device_name

from .chromium import Chromium, find_chromium
from .workflow_helpers import snakemake

RUN = "mini_order1"
CPU = device_name("cpu")  # "cpu (MODEL)": the kind of CPU the steps ran on
CIL = "cil_mini_4steps"  # the mini's class-incremental run, part of its default target
NAMES = ["Textures", "Faces"]
FIGURES = ["accuracy_matrix", "accuracy_per_dataset", "routing", "experts_task_0", "experts_task_1"]
CIL_FILES = [f"{CIL}_table.csv", f"{CIL}_table.md", f"{CIL}_metrics.json", f"{CIL}/accuracy.csv", f"{CIL}/costs.csv",
             f"{CIL}/config.yaml", f"{CIL}/figures/accuracy_per_step.png"]


@pytest.fixture(scope="module")
def run(reduced_mini_run):
    reduced_mini_run.check()
    r = reduced_mini_run.workdir / "results/mini"
    evaluation = json.loads((r / RUN / "eval/zero_shot.json").read_text())
    provenance = json.loads((r / f"{RUN}_metrics.json").read_text())["provenance"]
    # what every reader-facing output names: the run's config hash, the steps' commit
    return r, {"config_hash": provenance["config_hash"], "commit": evaluation["commit"], "provenance": provenance}


def fmt(v) -> str:
    return "" if v is None else f"{v:.1f}"


def expected_rows(r):
    """Every number of the table, recomputed here from the accuracy matrix and zero-shot evaluation."""
    names, acc = read_matrix_csv(r / RUN / "matrix.csv")
    zs = json.loads((r / RUN / "eval/zero_shot.json").read_text())["results"]
    zs_acc = [zs[n]["accuracy"] for n in names]
    rows = {}
    for method, matrix in (("MoE-Adapters (ours)", acc), ("Zero-shot CLIP (ours)", zero_shot_matrix(zs_acc, len(names)))):
        # recomputed from the definitions, not only through mtil_metrics
        for metric, per in (
            ("Transfer", [None, *[matrix[:j, j].mean() for j in range(1, len(names))]]),
            ("Avg", list(matrix.mean(axis=0))),
            ("Last", list(matrix[-1])),
        ):
            present = [v for v in per if v is not None]
            rows[(method, metric)] = [fmt(None if v is None else round1(v)) for v in per] + [fmt(round1(np.mean(present)))]
    return names, acc, rows


def test_every_result_a_reader_needs_is_there(run):
    r, evaluation = run
    for path in [
        r / f"{RUN}_table.csv", r / f"{RUN}_table.md", r / f"{RUN}_metrics.json", r / RUN / "costs.csv",
        r / RUN / "config.yaml", r / "REPRODUCIBILITY.md", r / "ledger.csv",
    ]:
        assert path.is_file() and path.stat().st_size > 0, path
    for name in FIGURES:
        with Image.open(r / RUN / "figures" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 250, name
    config = (r / RUN / "config.yaml").read_text()
    assert config.startswith(f"# validated run config of {RUN}, hash {evaluation['config_hash']} ")


def test_tables_match_the_matrix_they_came_from(run):
    r, prov = run
    names, acc, want = expected_rows(r)
    header, *body = list(csv.reader((r / f"{RUN}_table.csv").open()))
    assert header == ["method", "metric", *names, "mean", "config", "commit", "deviations"]
    got = {(row[0], row[1]): row[2:-3] for row in body}
    # every row says what produced it: the run's config hash, the steps' commit, the deviations from the reference
    assert {tuple(row[-3:]) for row in body} == {(prov["config_hash"], prov["commit"], prov["provenance"]["deviations_text"])}
    assert got == want  # mini: ours and zero-shot only, no paper rows and no differences to invent

    md = (r / f"{RUN}_table.md").read_text()
    for (method, metric), cells in want.items():
        assert f"| {method} | {metric} | " + " | ".join(c or "—" for c in cells) + " |" in md
    for i, row in enumerate(acc):
        assert f"| {i}: {names[i]} | " + " | ".join(fmt(round1(v)) for v in row) + " |" in md
    assert "no published numbers: the mini benchmark is this project's own" in md
    assert "(paper)" not in md

    metrics = json.loads((r / f"{RUN}_metrics.json").read_text())
    ours = mtil_metrics(acc, names)
    assert {k: metrics[k] for k in ("transfer", "avg", "last", "per_dataset")} == ours
    assert [fmt(metrics[k]) for k in ("transfer", "avg", "last")] == [want[("MoE-Adapters (ours)", m)][-1] for m in ("Transfer", "Avg", "Last")]
    assert [fmt(metrics["zero_shot"][k]) for k in ("transfer", "avg", "last")] == [
        want[("Zero-shot CLIP (ours)", m)][-1] for m in ("Transfer", "Avg", "Last")
    ]


def test_ledger_holds_our_means_with_config_and_commit(run):
    r, evaluation = run
    _, _, want = expected_rows(r)
    every = list(csv.DictReader((r / "ledger.csv").open()))
    rows = [x for x in every if x["setting"] == RUN]
    assert [(x["method"], x["metric"]) for x in rows] == [
        (m, k) for m in ("MoE-Adapters", "Zero-shot CLIP") for k in ("Transfer", "Avg", "Last")
    ]
    cil = json.loads((r / f"{CIL}_metrics.json").read_text())
    assert [(x["setting"], x["method"], x["metric"], float(x["ours"])) for x in every if x["setting"] == CIL] == [
        (CIL, m, k, v[k.lower()]) for m, v in (("MoE-Adapters", cil), ("Zero-shot CLIP", cil["zero_shot"]))
        for k in ("Avg", "Last")
    ]
    for x in rows:
        assert x["setting"] == RUN and x["ours"] == want[(f"{x['method']} (ours)", x["metric"])][-1]
        assert x["paper"] == "" and x["difference"] == ""  # the mini benchmark has no published numbers
        assert (x["config"], x["commit"], x["device"]) == (evaluation["config_hash"], evaluation["commit"], CPU)
    text = (r / "REPRODUCIBILITY.md").read_text()
    assert f"| {RUN} | MoE-Adapters | Last | — | {rows[2]['ours']} | — | {evaluation['config_hash']} |" in text


def test_cost_of_every_stage(run):
    r, evaluation = run
    costs = read_costs(r / RUN / "costs.csv")
    stages = [c["stage"] for c in costs]
    assert stages.count("training") == 2 and stages.count("autoencoders") == 3  # generic + one per task
    assert stages.count("evaluation") == 2 + 3  # features per test set, evaluation per task and zero-shot
    assert stages.count("pretraining") == 1
    for c in costs:
        assert c["wall_seconds"] > 0 and c["peak_memory_bytes"] > 10 << 20 and c["device"] == CPU, c
        assert c["config_hash"] and c["commit"] == evaluation["commit"], c  # each step's own config slice hash
    for c in costs:
        if c["stage"] in ("training", "autoencoders", "pretraining"):
            assert c["trainable_parameters"] > 0, c
    # activate-freeze: experts frozen after task 0 are no longer trained in task 1, and the cost says so
    task0, task1 = (c["trainable_parameters"] for c in costs if c["stage"] == "training")
    assert task1 < task0
    md = (r / f"{RUN}_table.md").read_text()
    assert "## Cost" in md and "| training | 2 |" in md


# --- the HTML report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(reduced_mini_run, run):
    out = reduced_mini_run.workdir / "report.html"
    r = snakemake(reduced_mini_run.workdir, "--cores", "1", "--configfile", str(reduced_mini_run.config), "--report", str(out))
    assert r.returncode == 0, (r.stderr + r.stdout)[-3000:]
    return out


class _Tags(HTMLParser):
    """The document's own tags (script bodies are not tags): every URL a tag would load."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v and tag in ("script", "link", "img", "iframe", "source", "embed"):
                self.urls.append((tag, v))


def report_results(html: str) -> dict:
    m = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', html, re.S)
    assert m, "no results in the report"
    return json.loads(m.group(1))


def test_report_is_self_contained_with_every_result_and_its_config(report, run):
    r, evaluation = run
    html = report.read_text()
    tags = _Tags()
    tags.feed(html)
    assert [u for u in tags.urls if not u[1].startswith(("data:", "#"))] == []  # no CDN, no file beside it
    results = report_results(html)
    want = {
        f"{RUN}_table.csv", f"{RUN}_table.md", f"{RUN}_metrics.json", f"{RUN}/matrix.csv", f"{RUN}_routing.csv",
        f"{RUN}/costs.csv", f"{RUN}/config.yaml", "REPRODUCIBILITY.md", "ledger.csv",
        *[f"{RUN}/figures/{f}.png" for f in FIGURES], *CIL_FILES,
    }
    assert set(results) == {f"results/mini/{p}" for p in want}
    cil_hash = json.loads((r / f"{CIL}_metrics.json").read_text())["provenance"]["config_hash"]
    for path, res in results.items():
        assert res["data_uri"].startswith("data:"), path
        own = cil_hash if f"/{CIL}" in path else evaluation["config_hash"]
        if "ledger" not in path and "REPRODUCIBILITY" not in path:
            assert own in res["caption"], f"{path}: caption does not name its run's config"
        else:
            assert evaluation["config_hash"] in res["caption"] and cil_hash in res["caption"], path
    assert "MoE-Adapters, reproduced: mini_order1" in html


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_opens_in_headless_chromium_with_no_failed_request(report, run, tmp_path):
    r, evaluation = run
    metrics = json.loads((r / f"{RUN}_metrics.json").read_text())
    with Chromium(find_chromium(), tmp_path / "profile") as browser:
        browser.open(report.as_uri())
        first = browser.wait_for("typeof app !== 'undefined' && document.querySelector('#app').innerText")
        shot = browser.screenshot(tmp_path / "first_page.png")
        # every figure of the report, shown the way the report shows it when a reader clicks on it
        shown = browser.evaluate(
            """(async () => {
                const out = [];
                for (const [path, res] of Object.entries(results)) {
                    if (!res.mime_type.startsWith("image/")) continue;
                    app.setView({content: "img", contentPath: res.data_uri, resultPath: path});
                    let img;
                    for (let i = 0; i < 100 && !img; i++) {
                        await new Promise(done => setTimeout(done, 20));
                        img = [...document.querySelectorAll("#app img")].find(x => x.getAttribute("src") === res.data_uri);
                    }
                    if (img) { try { await img.decode(); } catch (e) {} }
                    out.push([path, img ? img.naturalWidth : 0, img ? img.naturalHeight : 0]);
                }
                return out;
            })()"""
        )
        browser.screenshot(tmp_path / "figure.png")
        requested = list(browser.requests.values())
        failed, exceptions, console = browser.failed, browser.exceptions, browser.console_errors
    assert failed == [] and exceptions == [] and console == [], (failed, exceptions, console)
    assert requested and all(u.startswith(("file:", "data:")) for u in requested), requested  # nothing left the machine
    # the first page: title, the headline of the ledger with our means, and the way to the results
    assert "MoE-Adapters, reproduced: mini_order1" in first
    assert f"config {evaluation['config_hash']}" in first
    assert re.search(rf"MoE-Adapters\s+Last\s+—\s+{metrics['last']:.1f}\s+—", first), first[:2000]
    for category in ("Accuracy tables", "Figures", "Cost", "Config", "Ledger"):
        assert category in first
    assert sorted(p.rsplit("/", 1)[1] for p, *_ in shown) == sorted([*(f"{f}.png" for f in FIGURES), "accuracy_per_step.png"])
    for path, width, height in shown:
        with Image.open(r.parent.parent / path) as im:
            assert (width, height) == im.size, path  # decoded by the browser at the file's own size
    for png in (shot, tmp_path / "figure.png"):
        with Image.open(png) as im:
            assert im.size == (1400, 1000)
            assert len(im.convert("L").getcolors(1 << 16)) > 50, f"{png.name} is blank"


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_browser_check_sees_a_cdn_request_and_a_broken_image(tmp_path):
    """The harness itself: what the report test asserts empty is not empty for a page that needs the network."""
    page = tmp_path / "page.html"
    page.write_text(
        '<html><body><script src="https://cdn.example.org/lib.js"></script>'
        '<img src="missing.png"><p>hello</p></body></html>'
    )
    with Chromium(find_chromium(), tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        requested = set(browser.requests.values())
        failed = {url for url, _ in browser.failed}
    assert "https://cdn.example.org/lib.js" in requested and "https://cdn.example.org/lib.js" in failed
    assert (tmp_path / "missing.png").as_uri() in failed
