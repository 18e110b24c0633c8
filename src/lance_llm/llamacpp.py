"""llama.cpp beside lance: its source, its own server binary and checkpoints converted to GGUF.

    python -m lance_llm.llamacpp server                      # build llama-server once, print its path
    python -m lance_llm.llamacpp gguf CHECKPOINT [--outtype bf16]   # convert once, print the .gguf

The source is the llama.cpp tree vendored in the llama-cpp-python source package on PyPI (the
version pinned in requirements/constraints.txt, the one `make serve` compiles), fetched with
`pip download` into the lance cache: nothing comes from a hub. `llama-server` is built from it with
cmake (CPU, this machine's instruction set; ~6 min on 2 cores, once). A checkpoint is converted
with the `convert_hf_to_gguf.py` of the same tree, once per (weights fingerprint, outtype), bf16 by
default so that the numbers are the trained weights' own (f16, q8_0 as options).

Users: the generation benchmark's baseline (bench/gen.py) and `backend.openai.serve_command`,
where `{gguf}` is replaced by the served checkpoint converted here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from .models import cache_root, fingerprint
from .records import atomic_dir

VERSION = "0.3.36"  # llama-cpp-python; keep equal to requirements/constraints.txt (a test checks)
OUTTYPES = ("bf16", "f16", "f32", "q8_0")


class LlamaCppError(RuntimeError):
    """llama.cpp's source could not be fetched, built or run."""


def home(cache_dir: str | None = None) -> Path:
    return cache_root(cache_dir) / "llama.cpp" / VERSION


def source_dir(cache_dir: str | None = None) -> Path:
    """The vendored llama.cpp tree, fetched and extracted on first use."""
    out = home(cache_dir) / "src"
    if (out / "convert_hf_to_gguf.py").exists():
        return out
    sdist_dir = cache_root(cache_dir) / "wheels"
    sdist = sdist_dir / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "-d", str(sdist_dir), f"llama-cpp-python=={VERSION}"]
        print(f"llama.cpp: fetching its source package from PyPI (77 MB, once): {' '.join(cmd)}", file=sys.stderr)
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise LlamaCppError(f"could not fetch llama-cpp-python=={VERSION} ({e}); on an offline machine copy "
                                f"{sdist.name} into {sdist_dir}") from e
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with atomic_dir(out) as tmp, tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.name.startswith(prefix) and (member.isfile() or member.isdir()):
                member.name = member.name[len(prefix):]
                tar.extract(member, tmp, filter="data")
    return out


def server_binary(cache_dir: str | None = None) -> Path:
    """`llama-server`, built from the source on first use (CPU build for this machine)."""
    build = home(cache_dir) / "build"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    src = source_dir(cache_dir)
    if not shutil.which("cmake"):
        raise LlamaCppError("building llama-server needs cmake and a C++ compiler")
    print(f"llama.cpp: building llama-server in {build} (once; ~6 min on 2 cores)", file=sys.stderr)
    tmp = build.with_name("build.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
             # one self-contained binary: shared libraries would be looked up in the temporary build folder
             "-DBUILD_SHARED_LIBS=OFF"]
    jobs = str(os.cpu_count() or 2)
    for cmd in (["cmake", "-S", str(src), "-B", str(tmp), *flags],
                ["cmake", "--build", str(tmp), "--target", "llama-server", "-j", jobs]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise LlamaCppError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    shutil.rmtree(build, ignore_errors=True)
    tmp.rename(build)
    return binary


def gguf(checkpoint: str | Path, outtype: str = "bf16", cache_dir: str | None = None) -> Path:
    """The checkpoint as a GGUF file, converted once per (weights, outtype) and cached."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: one of {', '.join(OUTTYPES)}")
    checkpoint = Path(checkpoint)
    out = cache_root(cache_dir) / "gguf-converted" / f"{fingerprint(checkpoint)[:16]}-{outtype}.gguf"
    if out.exists():
        return out
    script = source_dir(cache_dir) / "convert_hf_to_gguf.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    cmd = [sys.executable, str(script), str(checkpoint), "--outtype", outtype, "--outfile", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise LlamaCppError(f"converting {checkpoint} to GGUF failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("server", help="build llama-server (once) and print its path")
    g = sub.add_parser("gguf", help="convert a checkpoint (once) and print the .gguf path")
    g.add_argument("checkpoint")
    g.add_argument("--outtype", default="bf16", choices=OUTTYPES)
    args = ap.parse_args(argv)
    try:
        print(server_binary() if args.cmd == "server" else gguf(args.checkpoint, args.outtype))
    except LlamaCppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
