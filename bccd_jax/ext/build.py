"""Builds the oneDNN convolution extension: python -m bccd_jax.ext.build [--out PATH] [--cxx g++]

Compiles bccd_jax/ext/onednn_conv.cc against oneDNN (3.x) and the XLA FFI headers that jaxlib ships
(`jax.ffi.include_dir()`), into bccd_jax/ext/_build/libbccd_onednn.so (or --out), with oneDNN's
library directory as its run path. Headers and library come from one oneDNN install (a folder with
include/ and lib/): $ONEDNN_ROOT when set (and nothing else), else the first of: where the pip packages
that `pip install -e '.[onednn]'` brings put their files (onednn-devel-cpu-gomp and onednn-cpu-gomp, or
onednn-devel and onednn), sys.prefix, /usr/local, /usr. The library carries its `build_id()` (the hash
of the source, the compiler flags and the XLA FFI headers), which bccd_jax.ext.onednn checks before it
loads it. Exits 2 with one line naming what is missing when a compiler, the headers or the library
cannot be found.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bccd_jax.ext.onednn import SOURCE, default_library_path

HEADER = Path("include/oneapi/dnnl/dnnl.hpp")
LIB_DIRS = ("lib", "lib64", "lib/x86_64-linux-gnu")
PACKAGES = ("onednn-devel-cpu-gomp", "onednn-cpu-gomp", "onednn-devel", "onednn")
INSTALL_HINT = "pip install -e '.[onednn]' (or set ONEDNN_ROOT to a oneDNN 3.x install with include/ and lib/)"
CXXFLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-Wno-return-type")
ROOT_ENV = "ONEDNN_ROOT"


class Missing(Exception):
    pass


def build_id() -> str:
    """sha256 of what the library's code depends on here: the source, CXXFLAGS and the XLA FFI headers of the
    installed jaxlib (the ABI the handlers are compiled against)."""
    import jax

    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CXXFLAGS).encode())
    for header in sorted((Path(jax.ffi.include_dir()) / "xla/ffi/api").glob("*.h")):
        h.update(header.name.encode() + header.read_bytes())
    return h.hexdigest()


def _package_roots() -> list[Path]:
    """The folders where oneDNN's pip packages put include/ and lib/ (the environment's prefix)."""
    from importlib import metadata

    roots = []
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            p = Path(dist.locate_file(f)).resolve()
            if p.name == "dnnl.hpp" and p.parent.name == "dnnl" and p.parent.parent.name == "oneapi":
                roots.append(p.parents[3])
            elif p.name == "libdnnl.so":
                roots.append(p.parent.parent if p.parent.name in ("lib", "lib64") else p.parents[2])
    return list(dict.fromkeys(roots))


def search_roots() -> list[Path]:
    """The installs looked at when $ONEDNN_ROOT is not set, in order: the pip packages', sys.prefix, /usr/local,
    /usr."""
    return list(dict.fromkeys(_package_roots() + [Path(sys.prefix), Path("/usr/local"), Path("/usr")]))


def _install(root: Path) -> tuple[Path, Path] | None:
    """(include dir, lib dir) of the oneDNN 3.x install in `root`; None when it lacks the headers or the library."""
    lib = next((root / d for d in LIB_DIRS if (root / d / "libdnnl.so").is_file()), None)
    if not (root / HEADER).is_file() or lib is None:
        return None
    inc = root / "include"
    major = re.search(r"#define DNNL_VERSION_MAJOR (\d+)", (inc / "oneapi/dnnl/dnnl_version.h").read_text())
    if not major or int(major.group(1)) < 3:
        raise Missing(f"oneDNN 3.x needed, {inc} holds an older one; install it: {INSTALL_HINT}")
    return inc, lib


def find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of one oneDNN install: $ONEDNN_ROOT's, else the first of `search_roots()` with both."""
    if os.environ.get(ROOT_ENV):
        root = Path(os.environ[ROOT_ENV])
        found = _install(root)
        if found is None:
            raise Missing(f"{ROOT_ENV}={root} lacks {HEADER} or lib/libdnnl.so; point it at a oneDNN 3.x install "
                          "or unset it")
        return found
    roots = search_roots()
    for root in roots:
        if found := _install(root):
            return found
    raise Missing(f"no oneDNN install with both {HEADER} and lib/libdnnl.so in {', '.join(map(str, roots))}; "
                  f"install one: {INSTALL_HINT}")


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
    cmd = [compiler, *CXXFLAGS, f'-DBCCD_ONEDNN_BUILD_ID="{build_id()}"', f"-I{ffi_inc}", f"-I{inc}", str(SOURCE),
           f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SOURCE.name} failed:\n{r.stderr}")
    tmp.replace(out)  # a new file (inode): a process that loaded the old one keeps it
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
    except RuntimeError as e:  # the compiler's own message follows
        print(f"bccd_jax.ext.build: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
