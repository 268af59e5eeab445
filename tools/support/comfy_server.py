"""Start and drive the real ComfyUI server (subprocess, CPU, loopback) with this pack and the test-only nodes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

from .comfy_env import ROOT, comfyui_path

TEST_NODES = ROOT / "tests" / "test_nodes"
FRONTENDS = ROOT / ".frontends"      # `make frontend FRONTEND=X` installs comfyui-frontend-package==X here


def frontend_choice() -> Optional[str]:
    """The frontend package version (or static folder) chosen with $DRAGEDIT_FRONTEND; None = the venv's own."""
    v = os.environ.get("DRAGEDIT_FRONTEND", "").strip()
    return v or None


def frontend_root(choice: Optional[str] = None) -> Optional[Path]:
    """Static folder of the chosen frontend for `main.py --front-end-root`, or None for the venv's bundled one.

    $DRAGEDIT_FRONTEND is a version installed by `make frontend FRONTEND=X` (.frontends/X) or a path to a static
    folder. Nothing is installed here: a missing version is an error that says how to install it."""
    choice = choice if choice is not None else frontend_choice()
    if not choice:
        return None
    path = Path(choice)
    if not path.is_absolute() and not path.exists():
        path = FRONTENDS / choice / "comfyui_frontend_package" / "static"
    if path.is_dir() and (path / "comfyui_frontend_package" / "static").is_dir():
        path = path / "comfyui_frontend_package" / "static"
    if not (path / "index.html").is_file():
        raise RuntimeError(f"DRAGEDIT_FRONTEND={choice!r}: no frontend at {path}. Install it first with "
                           f"`make frontend FRONTEND={choice}` (pip install --target .frontends/{choice} "
                           f"comfyui-frontend-package=={choice}).")
    return path.resolve()


def frontend_version() -> str:
    """Version of the frontend the test server serves (the chosen one, else the venv's package)."""
    root = frontend_root()
    if root is not None:
        for meta in root.parents[1].glob("comfyui_frontend_package-*.dist-info"):
            return meta.name[len("comfyui_frontend_package-"):-len(".dist-info")]
        return f"custom ({root})"
    try:
        from importlib.metadata import version
        return version("comfyui-frontend-package")
    except Exception:
        return "unknown"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptError(RuntimeError):
    """A prompt that ComfyUI rejected or that failed while executing; .details holds ComfyUI's answer."""

    def __init__(self, message: str, details: Any):
        super().__init__(message)
        self.details = details


class ComfyServer:
    """A ComfyUI server process with its own base directory (custom_nodes = this pack + test nodes)."""

    def __init__(self, base: Optional[Path] = None, port: Optional[int] = None, extra_nodes: bool = True):
        self.base = Path(base or tempfile.mkdtemp(prefix="dragedit-comfy-"))
        self.port = port or free_port()
        self.extra_nodes = extra_nodes
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float | None = None) -> "ComfyServer":
        """Lay out the base directory, start main.py and wait until it answers (up to `timeout` s; default
        $DRAGEDIT_SERVER_START_TIMEOUT or 300: a loaded 2-core machine takes minutes to import ComfyUI)."""
        if timeout is None:
            timeout = float(os.environ.get("DRAGEDIT_SERVER_START_TIMEOUT", "300"))
        cn = self.base / "custom_nodes"
        cn.mkdir(parents=True, exist_ok=True)
        for d in ("input", "output", "temp", "user"):
            (self.base / d).mkdir(exist_ok=True)
        link = cn / "ComfyUI-DragEdit"
        if link.is_symlink() and link.resolve() != ROOT.resolve():
            link.unlink()                      # a shared base (demo) last used by another checkout: use this one
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        if self.extra_nodes and not (cn / "dragedit_test_nodes").exists():
            (cn / "dragedit_test_nodes").symlink_to(TEST_NODES, target_is_directory=True)
        comfy = comfyui_path()
        cmd = [sys.executable, str(comfy / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'comfy.db'}"]
        front = frontend_root()
        if front is not None:
            cmd += ["--front-end-root", str(front)]
        help_text = (comfy / "comfy" / "cli_args.py").read_text()
        if "--disable-api-nodes" in help_text:
            cmd.append("--disable-api-nodes")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        # the repository root, so that the test-only nodes import `support` (ComfyUI's own folder stays first)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(comfy), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{self.log()}")
            try:
                self.get("/system_stats")
                return self
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def get(self, path: str) -> Any:
        """GET a JSON endpoint."""
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, body: Any) -> Any:
        """POST JSON; raises PromptError with ComfyUI's answer on HTTP errors."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            details = e.read().decode(errors="replace")
            try:
                details = json.loads(details)
            except ValueError:
                pass
            raise PromptError(f"POST {path} -> {e.code}: {details}", details) from None

    def run_prompt(self, graph: dict, timeout: float = 300.0) -> dict:
        """POST /prompt an API-format graph, wait for it, return its history entry (raises PromptError)."""
        ans = self.post("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        pid = ans["prompt_id"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h:
                entry = h[pid]
                st = entry.get("status", {})
                if st.get("status_str") == "error":
                    msgs = [m for m in st.get("messages", []) if m[0] == "execution_error"]
                    text = msgs[0][1].get("exception_message", "") if msgs else str(st)
                    raise PromptError(f"prompt failed: {text}", entry)
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt:\n{self.log()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s:\n{self.log()[-3000:]}")

    def run_prompt_messages(self, graph: dict, timeout: float = 300.0) -> tuple[dict, list[dict]]:
        """`run_prompt`, listening on the websocket as the frontend does: (history entry, the JSON messages the
        server sent this client while the prompt ran: "progress", "progress_state", "executing", ...)."""
        import asyncio

        import aiohttp
        cid = uuid.uuid4().hex

        async def listen() -> tuple[str, list[dict]]:
            msgs: list[dict] = []
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={cid}") as ws:
                    pid = self.post("/prompt", {"prompt": graph, "client_id": cid})["prompt_id"]
                    async for m in ws:
                        if m.type != aiohttp.WSMsgType.TEXT:
                            continue                       # binary frames: preview images
                        d = json.loads(m.data)
                        msgs.append(d)
                        data = d.get("data") or {}
                        if data.get("prompt_id") == pid and (
                                (d["type"] == "executing" and data.get("node") is None)
                                or d["type"] in ("execution_error", "execution_interrupted")):
                            break
            return pid, msgs

        pid, msgs = asyncio.run(asyncio.wait_for(listen(), timeout))
        entry = self.get(f"/history/{pid}").get(pid, {})
        return entry, msgs

    def output_images(self, entry: dict) -> list[Path]:
        """Files written by output nodes of a finished prompt."""
        out = []
        for node_out in entry.get("outputs", {}).values():
            for im in node_out.get("images", []):
                out.append(self.base / im.get("type", "output") / im.get("subfolder", "") / im["filename"])
        return out

    def cleanup(self) -> None:
        """Stop and delete the base directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def object_info(saved: Optional[Path] = None) -> dict:
    """/object_info from a saved JSON file, or from a server started for the purpose (for the tools/ scripts)."""
    if saved is not None:
        return json.loads(Path(saved).read_text())
    srv = ComfyServer(extra_nodes=False).start()
    try:
        return srv.get("/object_info")
    finally:
        srv.cleanup()
