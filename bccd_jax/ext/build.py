"""Builds the oneDNN convolution extension: python -m bccd_jax.ext.build [--out PATH] [--cxx g++]

Compiles bccd_jax/ext/onednn_conv.cc against oneDNN (3.x) and the XLA FFI headers that jaxlib ships
(`jax.ffi.include_dir()`), into bccd_jax/ext/_build/libbccd_onednn.so (or --out), with oneDNN's
library directory as its run path. oneDNN is looked up in $ONEDNN_ROOT (include/ and lib/), then in
the files of the pip packages that `pip install -e '.[onednn]'` brings (onednn-devel-cpu-gomp and
onednn-cpu-gomp, or onednn-devel and onednn), then under sys.prefix, /usr/local and /usr. Exits 2
with one line naming what is missing when a compiler, the headers or the library cannot be found.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bccd_jax.ext.onednn import SOURCE, default_library_path

HEADER = Path("oneapi/dnnl/dnnl.hpp")
PACKAGES = ("onednn-devel-cpu-gomp", "onednn-cpu-gomp", "onednn-devel", "onednn")
INSTALL_HINT = "pip install -e '.[onednn]' (or set ONEDNN_ROOT to a oneDNN 3.x install with include/ and lib/)"


class Missing(Exception):
    pass


def _package_dirs() -> list[Path]:
    """include/ and lib/ folders of oneDNN's pip packages (their files land under the environment's prefix)."""
    from importlib import metadata

    dirs = []
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            p = Path(dist.locate_file(f)).resolve()
            if p.name == "dnnl.hpp" and p.parent.name == "dnnl":
                dirs.append(p.parent.parent.parent)
            elif p.name == "libdnnl.so":
                dirs.append(p.parent)
    return dirs


def find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of a oneDNN 3.x install."""
    roots = [Path(os.environ["ONEDNN_ROOT"])] if os.environ.get("ONEDNN_ROOT") else []
    found = _package_dirs()
    roots += [d.parent for d in found] + [Path(sys.prefix), Path("/usr/local"), Path("/usr")]
    includes = [d for d in found if (d / HEADER).is_file()] + [r / "include" for r in roots]
    libs = [d for d in found if (d / "libdnnl.so").is_file()] + \
        [r / sub for r in roots for sub in ("lib", "lib64", "lib/x86_64-linux-gnu")]
    inc = next((d for d in includes if (d / HEADER).is_file()), None)
    lib = next((d for d in libs if (d / "libdnnl.so").is_file()), None)
    if inc is None:
        raise Missing(f"oneDNN headers (include/{HEADER}) not found; install them: {INSTALL_HINT}")
    if lib is None:
        raise Missing(f"oneDNN library (libdnnl.so) not found; install it: {INSTALL_HINT}")
    version = (inc / "oneapi/dnnl/dnnl_version.h").read_text()
    major = re.search(r"#define DNNL_VERSION_MAJOR (\d+)", version)
    if not major or int(major.group(1)) < 3:
        raise Missing(f"oneDNN 3.x needed, {inc} holds an older one; install it: {INSTALL_HINT}")
    return inc, lib


def find_cxx(cxx: str | None) -> str:
    for c in [cxx or os.environ.get("CXX")] if (cxx or os.environ.get("CXX")) else ["g++", "c++", "clang++"]:
        if c and shutil.which(c):
            return c
    raise Missing("no C++17 compiler found (g++, c++ or clang++; or set CXX); install one, e.g. apt-get install g++")


def build(out: Path | None = None, cxx: str | None = None, verbose: bool = False) -> Path:
    import jax

    out = Path(out) if out else default_library_path()
    compiler = find_cxx(cxx)
    inc, lib = find_onednn()
    ffi_inc = Path(jax.ffi.include_dir())
    if not (ffi_inc / "xla/ffi/api/ffi.h").is_file():
        raise Missing(f"XLA FFI headers not found in {ffi_inc}; install a jaxlib that ships them (>= 0.4.31)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wno-return-type",
           f"-I{ffi_inc}", f"-I{inc}", str(SOURCE), f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE.name} failed:\n{r.stderr}")
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help=f"default: {default_library_path()}")
    p.add_argument("--cxx", default=None, help="C++ compiler (default: $CXX, g++, c++ or clang++)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    try:
        out = build(a.out, a.cxx, a.verbose)
    except Missing as e:
        print(f"bccd_jax.ext.build: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
