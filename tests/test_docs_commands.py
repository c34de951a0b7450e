"""Every command in README.md and docs/*.md is run by a test.

The fenced ``bash``/``sh``/``shell``/``console`` blocks (one command per line, ``\\``
continuations joined, comments dropped; in ``console`` blocks only the ``$ `` lines) and
the ``python`` blocks are read from the docs. Each one must be on exactly one of three
reviewed lists:

* ``RUN``: run here, in order, in one temporary folder that holds a copy of ``examples/``
  (and links to ``tests/`` and ``benchmarks/``), with a timeout; exit status 0 expected.
  The README's first command runs first, so later blocks can use ``resnet_softpool.onnx``.
* ``COVERED``: the same command (or the same code) is run by another named test.
* ``SKIPPED``: not run, with the reason: what is missing here (a GPU, TensorRT, a running
  server, a package registry, hours of CPU).

A command in the docs that is on no list fails ``test_every_command_is_listed``; a list
entry that is no longer in the docs fails ``test_no_stale_entries``. Usage synopses are
``text`` blocks and are not commands.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)```([\w-]*)\s*$")  # indented fences too (code blocks inside list items)

# ------------------------------------------------------------------ the reviewed lists
# Keys: a shell command as it stands in the docs (whitespace collapsed, comment dropped),
# or "python: " + the last line of a python block that is not blank or a comment (its
# trailing comment dropped).

# Run here, in this order (seconds: the timeout of each).
RUN: dict[str, int] = {
    "poolexport examples/resnet_softpool.pt2 -o resnet_softpool.onnx": 600,
    "poolexport --version": 120,
    "poolexport inspect resnet_softpool.onnx": 120,
    "poolexport inspect resnet_softpool.onnx --json": 120,
    "poolexport bench resnet_softpool.onnx --batch 1,8 --dim height=32,width=32 --warmup 2 --iters 10 --json bench.json": 300,
    "poolexport examples/newcbam.ts -o newcbam.onnx --target portable --json newcbam.json": 300,
    # OpenVINO at f32 on the portable file newcbam.onnx
    'python: y = openvino.compile_model("newcbam.onnx", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]': 120,
    # ONNX Runtime with the library, on the README's first command's file
    "python: (y,) = sess.run(None, {sess.get_inputs()[0].name: x})": 120,
    # the README's "your own model"
    'python: onnx.save(onnx_model, "my_model.onnx")': 300,
    "poolexport inspect my_model.onnx": 120,
    "poolexport bench my_model.onnx --dim height=32,width=32": 300,
    # plain torch.onnx.export writes poolexport nodes
    'python: assert {n.domain for n in program.model_proto.graph.node} >= {"poolexport"}': 300,
    # create_pool / create_attention
    'python: pnn.create_attention("cbam", 64, channel_pools=("stochastic", "l2"), spatial_pools=("stochastic", "l2"))': 120,
    "python -m poolexport.selfcheck --gpu": 120,  # without a GPU: says so and exits 0
    # stochastic ops: a tensor seed gives the int seed's picks
    'python: assert torch.equal(by_tensor, by_int) and torch.equal(F.stochastic_pool2d(x, 2, mode="sample", seed=torch.tensor(7)), by_int)': 120,
    "poolexport triton-repo resnet_softpool.onnx -o model_repository/ --model-name resnet": 120,
    "python tests/mutation/run.py --list": 120,
    "python tests/mutation/generate.py --write gen.toml --sample 2 --fraction 0.03 --seed 21": 300,
}

# Run by another test: the command or code, and the test that runs it (file::function).
COVERED: dict[str, str] = {
    "pytest -q": ".ci/run (its last command; test_ci_runs_the_readme_test_command checks it)",
    "python examples/make_examples.py": "tests/test_docs_commands.py::test_make_examples_regenerates_loadable_examples",
    "pytest -q tests/test_cpu_isa.py": "tests/test_cpu_isa.py (the whole file, run by pytest -q)",
    "python -m pytest -q tests/test_selfcheck_fake.py tests/test_backward_emulated.py tests/test_kernels_emulated.py "
    "tests/test_gpu_discipline.py tests/test_cuda_driver.py":
        "tests/test_selfcheck_fake.py (these five files, each run whole by pytest -q)",
}

# Run only where this module imports (the test skips naming it otherwise; .ci/run installs both).
NEEDS: dict[str, str] = {
    'python: y = openvino.compile_model("newcbam.onnx", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]': "openvino",
    "poolexport triton-repo resnet_softpool.onnx -o model_repository/ --model-name resnet": "tritonclient",
}

# Not run: what is missing here.
SKIPPED: dict[str, str] = {
    # installs: they change the environment the suite runs in; .ci/run installs on a clean checkout
    "pip install torch==2.13.0": "installs packages; .ci/run runs this exact line",
    'pip install ".[cpu,test,serve]"': "installs packages into the running environment; .ci/run installs a superset",
    'CMAKE_ARGS="-DPOOLEXPORT_CUDA=OFF" pip install ".[cpu,test,serve]"':
        "a second build of the package (a minute on 2 cores, and it would replace the install under test); "
        "checked by hand: the wheel has no PTX and the CMake cache says POOLEXPORT_CUDA=OFF",
    'pip install ".[gpu,test]"': "needs a CUDA machine (onnxruntime-gpu, CuPy)",
    'pip install ".[openvino]"': "installs packages; .ci/run installs the openvino extra",
    'pip install ".[serve]"': "installs packages; .ci/run installs the serve extra",
    "pip install torch==2.13.0 torchvision --index-url https://download.pytorch.org/whl/cpu":
        "needs PyTorch's CPU wheel index, which this project's machines cannot reach",
    "pip install timm": "needs torchvision beside the CPU torch (see the line above)",
    # GPU / TensorRT
    "POOLEXPORT_REQUIRE_GPU=1 pytest -q": "needs a CUDA GPU, CuPy, onnxruntime-gpu and TensorRT",
    "poolexport build-engine model.onnx -o model.plan --shapes input:1x3x32x32/8x3x64x64/16x3x128x128":
        "needs TensorRT and a GPU",
    "poolexport build-engine model_fp16.onnx -o model_fp16.plan": "needs TensorRT and a GPU",
    "python -m poolexport.tensorrt.ptx":
        "compiles PTX with nvcc (minutes without its cache); tests/test_tensorrt_ptx.py builds and checks the same PTX",
    # the GPU window script (docs/development.md, GPU checks)
    "set -x": "the first line of the GPU window script, which needs a CUDA GPU",
    "nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee $OUT/nvidia-smi.csv":
        "needs a CUDA GPU and its driver (nvidia-smi)",
    "python -m poolexport.selfcheck --gpu --require-all -o $OUT/selfcheck.json | tee $OUT/selfcheck.txt":
        "needs a CUDA GPU (--require-all fails on a skipped backend); without one, tests/test_selfcheck_fake.py "
        "runs the self-check on a fake device",
    "POOLEXPORT_REQUIRE_GPU=1 python -m pytest -q -rs -p no:cacheprovider tests/test_torch_cuda.py "
    "tests/test_kernels_cuda.py tests/test_tensorrt_gpu.py tests/test_ort_cuda.py tests/test_selfcheck.py "
    "--junitxml=$OUT/gpu-tests.xml 2>&1 | tail -n 200 | tee $OUT/gpu-tests.txt":
        "needs a CUDA GPU, CuPy, onnxruntime-gpu and TensorRT (a skip is a failure)",
    # serving: a server that runs until stopped, and clients that need it
    "poolexport serve resnet_softpool.onnx --model-name resnet --max-batch-size 8":
        "runs until stopped; tests/test_serve_server.py starts the same server on free ports and stops it",
    'python: print(c.infer("resnet", [i]).as_numpy("output"))':
        "needs a running `poolexport serve`; tests/test_serve_server.py sends the same HTTP and gRPC requests",
    'curl -s 127.0.0.1:8000/v2/models/resnet/ready -o /dev/null -w "%{http_code}\\n"':
        "needs a running `poolexport serve` on port 8000; tests/test_serve_server.py checks readiness",
    "curl -s 127.0.0.1:8000/v2/models/resnet": "needs a running `poolexport serve` on port 8000",
    "curl -s -X POST 127.0.0.1:8000/v2/models/resnet/infer -H 'Content-Type: application/json' -d "
    "'{\"inputs\":[{\"name\":\"input\",\"shape\":[1,3,32,32],\"datatype\":\"FP32\",\"data\":[0.5, ...]}]}'":
        "needs a running `poolexport serve`, and its data is elided; tests/test_serve_server.py::"
        "test_raw_kserve_v2_json sends a full request",
    "curl -s 127.0.0.1:8002/metrics | grep nv_inference_count":
        "needs a running `poolexport serve`; tests/test_serve_server.py::test_metrics_endpoint",
    "tritonserver --model-repository=$PWD/model_repository": "needs tritonserver, which is not installed here",
    "docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/model_repository:/models TRITON_IMAGE "
    "tritonserver --model-repository=/models": "needs Docker and NVIDIA's Triton image",
    # long runs
    "python tests/mutation/run.py --file gen.toml --workers 2 --report gen.json":
        "about a minute per native mutant on 2 cores (hours for the sample)",
    "python benchmarks/bench_ort.py --threads 1,2 --repeat 12": "a benchmark: minutes of a quiet machine",
    "python benchmarks/bench_ort.py --portable --threads 2 --repeat 9": "a benchmark: minutes of a quiet machine",
    "python benchmarks/bench_ort.py --reduce": "a benchmark: a quiet machine",
    "python benchmarks/bench_networks.py --networks mobilenet_se --profile-pools --json netbench.json": "a benchmark: minutes of a quiet machine",
    "python benchmarks/bench_torch_ops.py --no-memory --repeat 25": "a benchmark: minutes of a quiet machine",
    "python benchmarks/bench_openvino.py --threads 2": "a benchmark: minutes of a quiet machine",
    "python benchmarks/bench_serve.py": "a benchmark: a server and clients for minutes, on a quiet machine",
    "python benchmarks/bench_serve.py --server poolexport --server tritonserver":
        "a benchmark: two servers and their clients for minutes, on a quiet machine",
    "python benchmarks/bench_ada_pool.py": "a benchmark: a quiet machine",
    "POOLEXPORT_ORT_LIBRARY=build-new/custom_ops/libpoolexport_ort.so python benchmarks/bench_ada_pool.py --repeat 60 --no-decomposition --baseline-library build-old/custom_ops/libpoolexport_ort.so":
        "a benchmark comparing two library builds the reader made; a quiet machine",
    "python benchmarks/bench_serve.py --model my.onnx --seconds 10 --json out.json":
        "a benchmark on a file of yours (my.onnx is a placeholder): minutes on a quiet machine",
    "python benchmarks/bench_export.py": "a benchmark: every example model through both exporters (minutes)",
    "python benchmarks/exp_error.py": "a benchmark: every float32 of [-60, 0] on each CPU path",
    'python: torch.export.save(program, "resnet18_softpool.pt2")':
        "needs torchvision, which is not installed on this project's machines; tests/test_own_model.py runs a "
        "torchvision-style network through replace_pools, export and parity",
}


# ------------------------------------------------------------------ reading the docs
def _strip_comment(line: str) -> str:
    """Drop a shell comment: a '#' at the start or after blank space, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _shell_commands(body: str, console: bool) -> list[str]:
    lines = body.splitlines()
    if console:
        lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
    out, cur = [], ""
    for ln in lines:
        ln = _strip_comment(ln).rstrip()
        if ln.endswith("\\"):
            cur += ln[:-1] + " "
            continue
        cur += ln
        if cur.strip():
            out.append(" ".join(cur.split()))
        cur = ""
    if cur.strip():
        out.append(" ".join(cur.split()))
    return out


def _python_key(body: str) -> str:
    for ln in reversed(body.splitlines()):
        s = ln.split("  #", 1)[0].strip()
        if s and not s.startswith("#"):
            return "python: " + s
    raise AssertionError(f"empty python block:\n{body}")


def doc_items() -> list[tuple[str, str, str, str]]:
    """(key, kind, text to run, where) for every command and python block of the docs."""
    items = []
    for path in DOCS:
        lang, start, body, indent = None, 0, [], ""
        for no, line in enumerate(path.read_text().splitlines(), 1):
            m = FENCE.match(line)
            if lang is None and m:
                indent, lang, start, body = m.group(1), m.group(2).lower(), no, []
            elif lang is not None and line.strip() == "```":
                where = f"{path.relative_to(ROOT)}:{start}"
                text = "\n".join(body) + "\n"
                if lang in SHELL_LANGS:
                    for cmd in _shell_commands(text, lang == "console"):
                        items.append((cmd, "shell", cmd, where))
                elif lang == "python":
                    items.append((_python_key(text), "python", text, where))
                lang = None
            elif lang is not None:
                body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
        assert lang is None, f"{path}: unclosed code block from line {start}"
    return items


ITEMS = doc_items()
BY_KEY: dict[str, tuple[str, str, str]] = {}
for _key, _kind, _text, _where in ITEMS:
    BY_KEY.setdefault(_key, (_kind, _text, _where))


# ------------------------------------------------------------------ the list checks
def test_every_command_is_listed():
    listed = set(RUN) | set(COVERED) | set(SKIPPED)
    missing = [f"{where}: {key}" for key, _, _, where in ITEMS if key not in listed]
    assert not missing, ("commands in the docs that no test runs and no list explains (add each to RUN, "
                         "COVERED or SKIPPED in tests/test_docs_commands.py):\n" + "\n".join(missing))


def test_no_stale_entries():
    in_docs = {key for key, _, _, _ in ITEMS}
    stale = [k for k in [*RUN, *COVERED, *SKIPPED, *NEEDS] if k not in in_docs]
    assert not stale, "listed but no longer in the docs:\n" + "\n".join(stale)


def test_lists_are_disjoint_and_explained():
    run, covered, skipped = set(RUN), set(COVERED), set(SKIPPED)
    assert not (run & covered) and not (run & skipped) and not (covered & skipped)
    assert all(reason.strip() for reason in SKIPPED.values()), "every skip states what is missing"
    for key, where in COVERED.items():
        target = where.split(" ", 1)[0]
        path, _, func = target.partition("::")
        assert (ROOT / path).is_file(), f"{key}: {path} does not exist"
        if func:
            assert f"def {func}(" in (ROOT / path).read_text(), f"{key}: {target} does not exist"


def test_same_key_same_text():
    """A key found in several places stands for one command: its texts must agree."""
    seen: dict[str, str] = {}
    for key, _, text, where in ITEMS:
        assert seen.setdefault(key, text) == text, f"{where}: {key!r} differs from an earlier block"


def _ci_commands() -> list[str]:
    text = (ROOT / ".ci" / "run").read_text()
    return _shell_commands(text, console=False)


def test_ci_runs_the_readme_test_command():
    """The README's "two commands" block is the main job and the suite; .ci/run ends by
    running exactly the suite's command."""
    first = "poolexport examples/resnet_softpool.pt2 -o resnet_softpool.onnx"
    where = next(w for k, _, _, w in ITEMS if k == first and w.startswith("README.md"))
    assert [k for k, _, _, w in ITEMS if w == where] == [first, "pytest -q"]
    assert _ci_commands()[-1] == "pytest -q"


# ------------------------------------------------------------------ running them
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out like the checkout for the commands: a copy of examples/ (the
    commands may write there) and read-only links to tests/ and benchmarks/."""
    wd = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "examples", wd / "examples")
    for name in ("tests", "benchmarks"):
        (wd / name).symlink_to(ROOT / name)
    return wd


def _env() -> dict:
    env = dict(os.environ)
    env.pop("POOLEXPORT_REQUIRE_GPU", None)
    return env


def _run_item(key: str, wd: Path, timeout: int) -> subprocess.CompletedProcess:
    kind, text, where = BY_KEY[key]
    if kind == "shell":
        argv = ["bash", "-c", text]
    else:
        script = wd / f"block_{abs(hash(key)) % 10**8}.py"
        script.write_text(text)
        argv = [sys.executable, str(script)]
    return subprocess.run(argv, cwd=wd, env=_env(), capture_output=True, text=True, timeout=timeout)


# files that later blocks use, and the documented command that writes each
PRODUCERS = {
    "resnet_softpool.onnx": "poolexport examples/resnet_softpool.pt2 -o resnet_softpool.onnx",
    "newcbam.onnx": "poolexport examples/newcbam.ts -o newcbam.onnx --target portable --json newcbam.json",
    "my_model.onnx": 'python: onnx.save(onnx_model, "my_model.onnx")',
}


@pytest.mark.parametrize("key", list(RUN))
def test_docs_command_runs(key, workdir):
    if key not in BY_KEY:
        pytest.fail(f"not in the docs any more: {key}")
    if key in NEEDS:
        pytest.importorskip(NEEDS[key], reason=f"{NEEDS[key]} is not installed (.ci/run installs it)")
    for name, producer in PRODUCERS.items():  # a test picked alone (-k) still finds its input
        if producer != key and name in BY_KEY[key][1] and not (workdir / name).exists():
            first = _run_item(producer, workdir, RUN[producer])
            assert first.returncode == 0, f"{producer}\n{first.stdout[-2000:]}\n{first.stderr[-2000:]}"
    proc = _run_item(key, workdir, RUN[key])
    assert proc.returncode == 0, f"{BY_KEY[key][2]}: {key}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def test_make_examples_regenerates_loadable_examples(tmp_path):
    """`python examples/make_examples.py` in a copy: it rewrites both examples, and the
    regenerated program loads and runs."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for f in ("resnet_softpool.pt2", "newcbam.ts"):
        (tmp_path / "examples" / f).unlink()
    proc = subprocess.run([sys.executable, "examples/make_examples.py"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "examples" / "resnet_softpool.pt2").is_file()
    assert (tmp_path / "examples" / "newcbam.ts").is_file()


# ------------------------------------------------------------------ links between the pages
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def test_links_between_pages_resolve():
    """Every relative link of the README and docs/ names a file that exists and, with a
    #fragment, a heading of that file."""
    bad = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, frag = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
                bad.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)
