"""The pruning panel in a real browser: JupyterLab on 127.0.0.1 runs a notebook that shows the panel on tiny-gpt2,
and Debian's chromium, driven by Playwright, moves a block slider, waits for the sparsity and perplexity lines to
change, exports the genome and checks the file against the sliders; on a SmolLM2-sized genome (30 blocks,
attention and MLP genes) it opens a collapsed section of blocks and moves an MLP slider. A broken front-end
(jupyterlab_widgets vs ipywidgets) fails here. The screenshot goes to figures/panel.png.

Needs /usr/bin/chromium and the playwright package (.ci/run installs both; no browser download): skipped without
them, a failure where CI=true."""
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from evoprune.notebook import ensure_kernel
from evoprune.records import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = ROOT / "figures" / "panel.png"
TIMEOUT_MS = 90_000  # a kernel importing torch on a busy 2-core machine

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PANEL_CELL = """\
import torch
from evoprune.models import tiny_gpt2
from evoprune.widgets import PrunePanel

windows = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
panel = PrunePanel(tiny_gpt2().model, windows, debounce_s=0.2, export_path="exported_genome.json")
panel"""

GROUPS_CELL = """\
import torch
from evoprune.models import tiny_gpt2
from evoprune.pruning import Pruner
from evoprune.widgets import PrunePanel

windows = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
model = tiny_gpt2(n_layer=30, n_embd=32, n_head=2).model
PrunePanel(model, windows, Pruner(model, genes_per_block=2), debounce_s=0.2)"""


@pytest.fixture(scope="module")
def playwright_api():
    missing = [] if CHROMIUM.is_file() else [f"{CHROMIUM} (apt-get install chromium)"]
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, missing = None, [*missing, "the playwright package (pip install playwright)"]
    if missing:
        reason = f"needs {' and '.join(missing)}; .ci/run installs both"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, token: str, path: str, method: str = "GET", timeout: float = 5):
    request = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"token {token}"})
    return urllib.request.urlopen(request, timeout=timeout)


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free loopback port with a token, serving ``tmp_path/work``; always stopped afterwards,
    its kernels with it."""
    ensure_kernel()
    work, port, token = tmp_path / "work", free_port(), secrets.token_hex(16)
    work.mkdir()
    url, log_path = f"http://127.0.0.1:{port}", tmp_path / "jupyterlab.log"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "run"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    command = [Path(sys.executable).with_name("jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={work}", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
               *(["--allow-root"] if os.geteuid() == 0 else [])]  # CI runs as root
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                api(url, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 90 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token, work
    finally:
        try:  # shuts its kernels down too (they run in sessions of their own, out of reach of a signal to it)
            api(url, token, "/api/shutdown", "POST")
            server.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def slider(page, gene: str):
    return page.locator(".widget-slider").filter(has=page.get_by_text(gene, exact=True))


@contextmanager
def notebook_page(playwright_api, lab, cell: str):
    """A browser page on a notebook holding ``cell``, every cell run."""
    url, token, work = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, work / "panel.ipynb")
    playwright_api.expect.set_options(timeout=TIMEOUT_MS)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/lab/tree/panel.ipynb?token={token}")
            page.get_by_text(re.compile(r"\| Idle$")).wait_for()  # the notebook is open and its kernel started
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            yield page
        finally:
            browser.close()


def test_panel_in_jupyterlab(playwright_api, lab):
    work = lab[2]
    export = work / "exported_genome.json"  # the kernel runs in the notebook's directory
    expect = playwright_api.expect
    with notebook_page(playwright_api, lab, PANEL_CELL) as page:
        sparsity = page.get_by_text(re.compile(r"^block sparsity"))
        ppl = page.get_by_text(re.compile(r"^perplexity \("))
        expect(sparsity).to_contain_text("block sparsity 45.00%")  # opens uniform at the target
        expect(ppl).to_have_text(re.compile(r"^perplexity \(2 calibration windows\): [\d.]+$"))
        before = sparsity.inner_text(), ppl.inner_text()

        handle = slider(page, "block 3").locator(".noUi-handle")
        handle.focus()
        handle.press("End")  # noUiSlider's keyboard support: to the maximum, 0.9
        expect(slider(page, "block 3").locator(".widget-readout")).to_have_text("0.900")
        expect(sparsity).not_to_have_text(before[0])
        expect(sparsity).to_contain_text("block sparsity 48.75%")  # (11 x 0.45 + 0.9) / 12
        expect(ppl).not_to_have_text(before[1])
        expect(ppl).to_have_text(re.compile(r"^perplexity \(2 calibration windows\): [\d.]+$"))

        page.get_by_role("button", name="export genome").click()
        expect(page.get_by_text(f"exported to {export.name}")).to_be_visible()
        shown = [float(slider(page, f"block {b}").locator(".widget-readout").inner_text())
                 for b in range(12)]
        assert json.loads(export.read_text())["genome"] == pytest.approx(shown, abs=5e-4)
        assert shown[3] == 0.9 and shown[:3] == [0.45] * 3

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-slider")).first.screenshot(
            path=SCREENSHOT)  # the panel, not the dtype line printed above it


def test_panel_of_a_smollm2_sized_genome_moves_an_mlp_slider(playwright_api, lab):
    """30 blocks with attention and MLP genes (60 sliders, as a SmolLM2 group search): the blocks come in
    collapsible sections of ten; open the second, move block 17's MLP slider."""
    expect = playwright_api.expect
    with notebook_page(playwright_api, lab, GROUPS_CELL) as page:
        sparsity = page.get_by_text(re.compile(r"^block sparsity"))
        expect(sparsity).to_contain_text("block sparsity 45.00%")
        expect(slider(page, "2.mlp")).to_be_visible()  # the first section is open
        expect(slider(page, "17.mlp")).to_be_hidden()
        page.get_by_text("blocks 10-19", exact=True).click()
        handle = slider(page, "17.mlp").locator(".noUi-handle")
        handle.focus()
        handle.press("End")
        expect(slider(page, "17.mlp").locator(".widget-readout")).to_have_text("0.900")
        expect(slider(page, "17.attn").locator(".widget-readout")).to_have_text("0.450")
        expect(sparsity).not_to_contain_text("block sparsity 45.00%")
