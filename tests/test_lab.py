"""The notebooks where JupyterLab runs them: a kernel starts in the notebook's own folder (book/, book/figures/),
so every relative path of a parameters cell must be read against the repository root, not the working directory.
Each page is executed here by papermill with its working directory set to its own folder, on the tiny real run
(conftest.py's tiny_cubes) given by a path relative to the repository root that does not exist from the page's
folder: a page that read it from its working directory would find no cube. Then the same through a real Jupyter
server configured as `python -m nc.lab` configures JupyterLab's: open, run all cells in the server's kernel, save."""
import base64
import contextlib
import datetime
import difflib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from nc import lab, paths
from nc.report import pages, profiles

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "book" / "figures"
FOLLOWUP_PAGES = {"mse", "fixed_etf", "weight_decay", "imbalance"}  # need the follow-up runs' treatments to draw
NO_CUBE = ("has no current cube", "not trained yet", "No cube with collapse by depth yet")
TINY_TRAIN = """dataset: demo
network: vgg11
n_per_class: 12
test_n_per_class: 5
image_size: 16
width: 0.125
epochs: 4
lrs: [0.05]
snapshot_epochs: [1, 4]
robustness_images: 2
fig1_samples: 2
device: cpu
"""


def relative_to_root(path: Path, page_dir: Path) -> str:
    """`path` relative to the repository root; checked not to exist when read from `page_dir` instead."""
    rel = os.path.relpath(path, ROOT)
    assert not (page_dir / rel).exists(), f"{rel} exists from {page_dir} too: the test would not tell the two apart"
    return rel


def execute_in_own_folder(source: Path, parameters: dict, tmp_path: Path) -> tuple[list[bytes], str]:
    """papermill over a MyST page with the kernel's working directory set to the page's folder (as JupyterLab):
    the PNG images and the Markdown / HTML / plain text of its outputs; no cell may raise."""
    import jupytext
    import papermill

    out = tmp_path / f"{source.stem}.ipynb"
    papermill.execute_notebook(jupytext.read(source), str(out), parameters=parameters, cwd=str(source.parent),
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    data = [o.get("data", {}) for o in outputs]
    images = [base64.b64decode(d["image/png"]) for d in data if "image/png" in d]
    assert all(i.startswith(b"\x89PNG") for i in images)
    text = "\n".join("".join(d.get(k, "")) for d in data for k in ("text/markdown", "text/html", "text/plain"))
    text += "\n".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    return images, text


@pytest.mark.parametrize("name", [p.name for p in pages.book_pages()])
def test_each_figure_page_runs_in_its_own_folder_on_root_relative_cubes(name, tiny_cubes, tmp_path):
    rel = relative_to_root(tiny_cubes, FIGURES)
    parameters = {"profile": "tiny", "cube_dir": rel}
    if name in {p.name for p in pages.PAGES if p.part == pages.AFTER}:
        parameters["followups_dir"] = rel  # the tiny run is a baseline-like run: the follow-up pages find it
    if name == "cdnv":  # its transfer section reads the follow-up runs: the tiny folder has no transfer run
        parameters["followups_dir"] = rel
    images, text = execute_in_own_folder(FIGURES / f"{name}.md", parameters, tmp_path)
    assert not [m for m in NO_CUBE if m in text], text[:2000]
    if name == "cdnv":  # ... and says so about the folder read against the root, not the page's own folder
        assert f"No transfer run in `{paths.resolve(rel)}`" in text, text[:2000]
    if name not in FOLLOWUP_PAGES:  # those draw a treatment against the baseline; the tiny run has no treatment
        assert images, f"{name} drew nothing"
    if name in pages.GRID_PAGES:
        assert "1 dataset × network cell(s) with a run" in text
    if name == "depth":  # the VGG's linear head: DNC2 / DNC3 per head layer (nc.measure.head)
        assert all(f"| demo-vgg11 | {layer} |" in text for layer in ("fc6", "fc7", "classifier")), text[-3000:]


@pytest.mark.parametrize("name", ["fig1", "fig6", "depth", "mse", "fixed_etf", "weight_decay", "imbalance"])
def test_a_page_over_an_empty_cube_folder_says_so_and_raises_nothing(name, tmp_path):
    """`reproduce followups` before the demo renders the demo's pages over an empty folder: each page (those that do
    not open through pages.setup, and fig6 for the ones that do) must say where it looked, not fail."""
    empty = tmp_path / "empty"
    empty.mkdir()
    parameters = {"profile": "empty", "cube_dir": str(empty)}
    if name in {p.name for p in pages.PAGES if p.part == pages.AFTER}:
        parameters["followups_dir"] = str(empty)
    images, text = execute_in_own_folder(FIGURES / f"{name}.md", parameters, tmp_path)
    assert [m for m in (*NO_CUBE, "not run yet", "nox -s reproduce") if m in text], text[:2000]


def test_the_intro_runs_in_its_own_folder_on_root_relative_folders(tiny_cubes, tmp_path):
    book = ROOT / "book"
    params = tmp_path / "tiny"
    params.mkdir()
    (params / "demo-vgg11.yaml").write_text("network: vgg11\n")
    (params / "demo-resnet18.yaml").write_text("network: resnet18\n")  # no cube: listed as not run
    _, text = execute_in_own_folder(book / "intro.md", {"profile": "tiny", "cube_dir": relative_to_root(
        tiny_cubes, book), "parameters_dir": relative_to_root(params, book)}, tmp_path)
    assert 'href="runs/demo-vgg11.html"' in text and "| resnet18 | | | | | | | not run | | |" in text


def test_the_run_page_trains_into_a_root_relative_folder_from_its_own_folder(tmp_path):
    book = ROOT / "book"
    params, cubes = tmp_path / "tiny", tmp_path / "cubes"
    params.mkdir()
    (params / "demo-vgg11.yaml").write_text(TINY_TRAIN)
    images, text = execute_in_own_folder(book / "train.md", {
        "param_file": relative_to_root(params / "demo-vgg11.yaml", book),
        "cube_dir": relative_to_root(cubes, book), "threads": 1}, tmp_path)
    assert (cubes / "demo-vgg11.nc").is_file() and images
    assert "Not run" not in text


def test_an_absolute_folder_is_used_as_it_is_and_a_relative_one_against_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    assert paths.resolve("cubes/demo") == ROOT / "cubes" / "demo"
    assert paths.resolve("~/c") == Path.home() / "c"


def test_a_folder_without_cubes_is_named_absolutely_with_the_command_that_fills_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root: the folder is still the root's
    prof = profiles.open_profile("cubes/no-such-profile")
    assert prof.attrs["directory"] == str(ROOT / "cubes" / "no-such-profile") and not profiles.cells(prof)
    text = profiles.no_cube_text("no-such-profile", "cubes/no-such-profile")
    assert f"`{ROOT / 'cubes' / 'no-such-profile'}`" in text
    assert "`nox -s reproduce -- no-such-profile`" in text and str(ROOT) in text
    other = profiles.no_cube_text("demo", tmp_path / "elsewhere")
    assert f"`python -m nc.sweep parameters/demo --cube-dir {tmp_path / 'elsewhere'}`" in other


def test_the_lab_command_names_the_pages_and_what_to_install(monkeypatch, capsys):
    assert lab.page_path(None) == lab.DEFAULT_PAGE
    assert lab.page_path("fig6") == lab.page_path("figures/fig6") == lab.page_path("book/figures/fig6.md") \
        == "book/figures/fig6.md"
    assert lab.page_path("train") == "book/train.md"
    with pytest.raises(SystemExit) as err:
        lab.page_path("fig99")
    assert "no page 'fig99'" in str(err.value) and "book/figures/fig6.md" in str(err.value)
    assert set(lab.notebooks()) >= {"book/intro.md", "book/train.md", *(f"book/figures/{p.name}.md"
                                                                          for p in pages.PAGES)}
    monkeypatch.setattr(lab.importlib.util, "find_spec", lambda name: None)  # neither jupyterlab nor jupytext
    with pytest.raises(SystemExit) as err:
        lab.main(["figures/fig6", "--no-browser"])
    assert "jupyterlab, jupytext not installed" in str(err.value) and "`nox -s lab`" in str(err.value)
    cmd = lab.command("book/figures/fig6.md", ["--no-browser", "--port=9999"])
    assert cmd[-3:] == ["book/figures/fig6.md", "--no-browser", "--port=9999"]
    assert f"--ServerApp.root_dir={ROOT}" in cmd and f"--ServerApp.contents_manager_class={lab.CONTENTS_MANAGER}" in cmd


def test_every_page_carries_the_kernelspec_jupyterlab_saves():
    import yaml

    for page in lab.notebooks():
        header = yaml.safe_load((ROOT / page).read_text().split("---\n")[1])
        assert list(header["kernelspec"].items()) == list(lab.KERNELSPEC.items()), page


# A real Jupyter server, configured as nc.lab configures JupyterLab's (jupytext's contents manager), on a copy of
# the page: what JupyterLab does when a user opens book/figures/fig6.md, runs all cells and saves.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Jupyter server on 127.0.0.1 (a free port, a token) rooted at `root`, with nc.lab's server options; its REST
    API through `api`, a kernel's channels through `channels`. The kernels it starts run this test's `nc`."""

    START_S, REQUEST_S = 180, 120  # generous bounds for a loaded 2-core machine

    def __init__(self, root: Path, log: Path):
        self.token, self.log, self.kernel_pids = secrets.token_hex(16), log, []
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                            "JUPYTER_CONFIG_DIR": str(log.parent / "jupyter-config"),  # not the user's settings
                            "JUPYTER_RUNTIME_DIR": str(log.parent / "jupyter-runtime")}
        for _ in range(3):  # another process may take the free port between its choice and the bind
            self.port = _free_port()
            with open(log, "w") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "jupyter_server", *lab.server_options(root), "--ServerApp.ip=127.0.0.1",
                     f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.open_browser=False",
                     "--ServerApp.allow_root=True", f"--IdentityProvider.token={self.token}"],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
            deadline = time.monotonic() + self.START_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    self.api("GET", "/api/status", timeout=5)
                    return
                time.sleep(0.5)
            self.stop()
            if "already in use" not in log.read_text():
                break
        pytest.skip(f"the Jupyter server did not start: {log.read_text()[-3000:]}")

    def api(self, method: str, path: str, body=None, timeout=REQUEST_S):
        """One REST call with the token; the JSON answer (None when empty)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def channels(self, kernel_id: str, session: str):
        """The kernel's websocket (jupyter_server's JSON protocol), as JupyterLab connects to it."""
        import websocket

        return websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?session_id={session}",
            header=[f"Authorization: token {self.token}"], timeout=self.REQUEST_S)

    def stop(self) -> None:
        """Shut the server down (its kernels with it) through the API, else by signals; then no kernel it ran is
        left (a kernel runs in a process group of its own)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.api("POST", "/api/shutdown", timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(30)
        for pid in self.kernel_pids:
            for _ in range(60):
                if not _alive(pid):
                    break
                time.sleep(0.5)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """A running process (Linux /proc), not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _message(session: str, msg_type: str, content: dict) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": "test", "session": session, "msg_type": msg_type, "version": "5.3",
              "date": datetime.datetime.now(datetime.UTC).isoformat()}
    return msg_id, json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                               "channel": "shell", "buffers": []})


def run_in_kernel(ws, session: str, code: str, timeout: float = 600) -> list[dict]:
    """Execute `code` in the kernel behind the websocket `ws`: its outputs as notebook outputs (nbformat), once the
    kernel is idle again and has replied."""
    import nbformat

    msg_id, text = _message(session, "execute_request", {"code": code, "silent": False, "store_history": True,
                                                          "user_expressions": {}, "allow_stdin": False,
                                                          "stop_on_error": True})
    ws.send(text)
    outputs, idle, reply, deadline = [], False, None, time.monotonic() + timeout
    while not (idle and reply):
        ws.settimeout(max(1.0, deadline - time.monotonic()))  # a cell may print nothing for minutes
        try:
            msg = json.loads(ws.recv())
        except websocket_timeout():
            raise AssertionError(f"no answer to {code[:200]!r} in {timeout} s") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif kind in ("display_data", "execute_result", "stream", "error"):
            outputs.append(nbformat.v4.output_from_msg(msg))
    return outputs


def kernel_info(ws, session: str, timeout: float = 300) -> dict:
    """kernel_info_request until the kernel answers (it may still be starting): the reply's content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id, text = _message(session, "kernel_info_request", {})
        ws.send(text)
        with contextlib.suppress(websocket_timeout()):
            ws.settimeout(10)
            while True:
                msg = json.loads(ws.recv())
                if msg["parent_header"].get("msg_id") == msg_id and msg["header"]["msg_type"] == "kernel_info_reply":
                    return msg["content"]
    raise AssertionError(f"the kernel did not answer in {timeout} s")


def websocket_timeout():
    import websocket

    return websocket.WebSocketTimeoutException


@pytest.fixture
def jupyter_server(tmp_path):
    """A server (stopped at the end whatever happens) on a copy of the repository's fig6 page and jupytext.toml."""
    for module in ("jupyter_server", "jupytext", "websocket", "nbformat"):
        pytest.importorskip(module, reason=f"{module} is not installed: no Jupyter server can run here")
    root = tmp_path / "repo"
    (root / "book" / "figures").mkdir(parents=True)
    shutil.copy(ROOT / "jupytext.toml", root / "jupytext.toml")
    shutil.copy(FIGURES / "fig6.md", root / "book" / "figures" / "fig6.md")
    server = Server(root, tmp_path / "server.log")
    try:
        yield server, root
    finally:
        server.stop()


def test_a_real_jupyter_server_opens_runs_and_saves_fig6_through_jupytext(jupyter_server, tiny_cubes):
    server, root = jupyter_server
    page, repo_page = root / "book" / "figures" / "fig6.md", (FIGURES / "fig6.md").read_text()
    original = page.read_text()
    model = server.api("GET", "/api/contents/book/figures/fig6.md?type=notebook&content=1")
    assert model["type"] == "notebook" and model["format"] == "json"  # the .md is opened as a notebook
    nb = model["content"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    parameters = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(parameters) == 1
    rel = relative_to_root(tiny_cubes, page.parent)
    edited = parameters[0]["source"].replace('profile = "demo"', 'profile = "tiny"').replace(
        'cube_dir = "cubes/demo"', f"cube_dir = {json.dumps(rel)}")
    assert edited.count("tiny") == 1 and rel in edited, parameters[0]["source"]
    parameters[0]["source"] = edited

    session = server.api("POST", "/api/sessions", {"path": "book/figures/fig6.md", "type": "notebook",
                                                    "name": "fig6.md", "kernel": {"name": "python3"}})
    client_session = uuid.uuid4().hex
    ws = server.channels(session["kernel"]["id"], client_session)
    try:
        info = kernel_info(ws, client_session)
        where = run_in_kernel(ws, client_session, "import os\nprint(os.getpid(), os.getcwd())")
        pid, cwd = where[0]["text"].split(maxsplit=1)
        server.kernel_pids.append(int(pid))
        assert cwd.strip() == str(page.parent)  # JupyterLab's kernel runs in the page's folder
        for n, cell in enumerate(code, 1):  # Run All
            cell["outputs"], cell["execution_count"] = run_in_kernel(ws, client_session, cell["source"]), n
            cell["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}  # JupyterLab's timing
            errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
            assert not errors, "\n".join(errors[0]["traceback"])
    finally:
        ws.close()
        server.api("DELETE", f"/api/sessions/{session['id']}")
    outputs = [o for c in code for o in c["outputs"]]
    images = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert images and all(i.startswith(b"\x89PNG") for i in images)
    text = json.dumps(outputs, ensure_ascii=False)
    assert not [m for m in NO_CUBE if m in text] and "1 dataset × network cell(s) with a run" in text

    # What JupyterLab (4.x, NotebookPanel._updateSpec) writes once a kernel is connected: the kernel's spec, in this
    # key order, and its language_info
    spec = server.api("GET", "/api/kernelspecs")["kernelspecs"][session["kernel"]["name"]]["spec"]
    nb["metadata"]["kernelspec"] = {"name": session["kernel"]["name"], "display_name": spec["display_name"],
                                    "language": spec["language"]}
    nb["metadata"]["language_info"] = info["language_info"]
    saved = server.api("PUT", "/api/contents/book/figures/fig6.md",
                       {"type": "notebook", "format": "json", "content": nb})
    assert saved["path"] == "book/figures/fig6.md" and saved["type"] == "notebook"
    after = page.read_text()
    for output in ("image/png", "iVBORw0KGgo", "outputs", "execution_count", "language_info", "iopub"):
        assert output not in after, output
    removed, added = ([line[2:] for line in difflib.ndiff(original.splitlines(), after.splitlines())
                       if line.startswith(sign)] for sign in ("- ", "+ "))
    assert removed == ['profile = "demo"', 'cube_dir = "cubes/demo"'], (removed, added)
    assert added == ['profile = "tiny"', f"cube_dir = {json.dumps(rel)}"], (removed, added)
    assert (FIGURES / "fig6.md").read_text() == repo_page  # the repository's page untouched
