"""The layout's promises: five entry modules at the top over one package whose layers import only
downwards (config <- runtime <- audio <- engine <- serving), no import circles, no product module over
400 lines; a batch-only worker never loads the WebSocket stack; result types need no torch; every
setting comes from settings.py with its default written once."""

import ast
import dataclasses
import json
import subprocess
import sys

from parakeet_worker.config.settings import ENV, Settings
from tests.helpers import ROOT

FACES = {"rp_handler", "asr_engine", "websocket_handler", "audio_utils", "client"}
LAYERS = ["config", "runtime", "audio", "engine", "serving"]  # each may import only itself and those before it
PACKAGE = ROOT / "parakeet_worker"


def _module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path) -> set[str]:
    """Every module a file imports, at the top or inside a function (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_the_package_never_imports_the_entry_modules():
    for path in PACKAGE.rglob("*.py"):
        top = {m.split(".")[0] for m in _imports(path)}
        assert not top & FACES, f"{path.relative_to(ROOT)} imports {top & FACES}"


def test_layers_import_only_downwards():
    for name, deps in _graph().items():
        layer = name.split(".")[1] if name.count(".") >= 1 else None
        if layer not in LAYERS:
            continue
        for dep in deps:
            dep_layer = dep.split(".")[1] if dep.count(".") >= 1 else None
            if dep_layer in LAYERS:
                assert LAYERS.index(dep_layer) <= LAYERS.index(layer), f"{name} ({layer}) imports {dep} ({dep_layer})"


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_product_module_over_400_lines():
    files = list(PACKAGE.rglob("*.py")) + [ROOT / f"{f}.py" for f in FACES]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_nothing_flat_at_the_root_but_the_entry_modules():
    assert {p.stem for p in ROOT.glob("*.py")} == FACES


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_batch_worker_does_not_import_the_websocket_stack():
    loaded = _modules_after("import rp_handler")
    assert "rp_handler" in loaded and "parakeet_worker.engine.engine" in loaded
    stack = {"websockets", "websocket_handler"} | {
        f"parakeet_worker.{m}"
        for m in (
            "serving.websocket_job",
            "serving.session",
            "serving.asr_server",
            "serving.http_server",
            "serving.openai.routes",
            "engine.streaming",
            "engine.stream_pipeline",
        )
    }
    assert not stack & loaded, stack & loaded


def test_formatting_and_result_types_do_not_import_torch():
    loaded = _modules_after(
        "import parakeet_worker.serving.formatting, parakeet_worker.engine.transcript, "
        "parakeet_worker.engine.windows, parakeet_worker.serving.job_schema, "
        "parakeet_worker.config.settings, parakeet_worker.config.errors"
    )
    assert "torch" not in loaded and "parakeet_worker.engine.engine" not in loaded


def test_every_setting_has_one_variable_and_its_default_from_the_dataclass():
    assert set(ENV) == {f.name for f in dataclasses.fields(Settings)}
    assert Settings.from_env({}) == Settings()
    names = [n for ns in ENV.values() for n in ns]
    assert len(names) == len(set(names))


def test_settings_parse_each_type():
    s = Settings.from_env(
        {
            "MAX_BATCH_SIZE": "4",
            "MAX_BATCH_WAIT_MS": "2.5",
            "TORCH_COMPILE": "yes",
            "CUDA_GRAPHS": "0",
            "ALLOWED_URL_HOSTS": "Example.com, a:81,",
            "PRECISION": "BF16",
            "WORKER_MODE": "Load_Balancer",
            "PARAKEET_MODEL": "",
            "RUNPOD_GENERATOR_HANDLER": "1",
        }
    )
    assert (s.max_batch_size, s.max_batch_wait_ms, s.compile, s.cuda_graphs) == (4, 2.5, True, False)
    assert s.allowed_url_hosts == ("example.com", "a:81") and s.precision == "bf16"
    assert s.worker_mode == "load_balancer" and s.generator_handler and s.model == Settings.model


def test_ws_port_falls_back_to_port_and_names_its_public_mapping():
    s = Settings.from_env({"PORT": "9000", "RUNPOD_TCP_PORT_9000": "40123", "RUNPOD_TCP_PORT_8765": "1"})
    assert (s.listen_port, s.runpod_public_ws_port) == (9000, 40123)
    s = Settings.from_env({"WS_PORT": "8765", "PORT": "9000", "RUNPOD_TCP_PORT_8765": "40124"})
    assert (s.listen_port, s.runpod_public_ws_port) == (8765, 40124)


def test_no_machine_paths_and_no_large_files_are_tracked():
    """Committed files name paths relative to the repository (results JSONs included), and
    nothing over 1 MB is tracked but the test model."""
    import re

    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    machine = re.compile(r"(?<![\w.])(/work|/root|/home/[\w.-]+|/Users/[\w.-]+)/[\w.-]+")
    for name in listed:
        path = ROOT / name
        if not path.is_file():
            continue
        if path.stat().st_size > 1 << 20:
            assert name == "tests/assets/tiny_parakeet.nemo", f"{name} is over 1 MB"
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found = machine.search(text)
        assert not found, f"{name} names a machine path: {found.group(0)}"
