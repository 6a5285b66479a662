"""Build hook for the optional C++ CPU kernels (plain C ABI shared library, loaded by ctypes).

`pip install .` compiles csrc/*.cpp with the system C++ compiler into
hetero_qwen/kernels/_hq_kernels*.so. Each ISA copy of the kernels (hq_scalar/hq_avx2/hq_avx512/
hq_avx512bf16)
gets its own -m flags; the AVX-512 copy is skipped when the compiler lacks those flags. The
library picks the best copy the running CPU supports at load time, so one build runs on any
x86-64 machine. A failed or impossible build never fails the install: the package installs
without the library and `hetero_qwen.kernels.cpp` says how to build it (the Numba kernels are
used meanwhile). In-place build for development: `python setup.py build_ext --inplace`.
No Python.h and no torch C++ headers are used, so the isolated build env stays tiny.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fno-math-errno", "-pthread"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
VARIANTS = [  # (source, flags, define in hq_api.cpp when built)
    ("hq_scalar.cpp", [], None),
    ("hq_avx2.cpp", ["-mavx2", "-mfma", "-mf16c"], "HQ_HAVE_AVX2"),
    ("hq_avx512.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                       "-mavx512vnni"], "HQ_HAVE_AVX512"),
    ("hq_avx512bf16.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                           "-mavx512vnni", "-mavx512bf16"], "HQ_HAVE_AVX512BF16"),
]


class BuildHQ(build_ext):
    def build_extension(self, ext):
        try:
            self._build(ext)
        except Exception as e:  # never fail the install over the optional kernels
            print(f"warning: hetero-qwen C++ kernels not built ({e}); the Numba kernels will be "
                  "used. Install a C++ compiler (g++ or clang++) and run "
                  "`pip install --force-reinstall --no-deps .` to build them.", file=sys.stderr)

    def _flags_ok(self, flags):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "t.cpp")
            with open(src, "w") as f:
                f.write("int main(){return 0;}\n")
            try:
                self.compiler.compile([src], output_dir=d, extra_postargs=BASE_FLAGS + flags)
                return True
            except Exception:
                return False

    def _build(self, ext):
        objects, defines = [], []
        tmp = os.path.join(self.build_temp, "hq")
        os.makedirs(tmp, exist_ok=True)
        for src, flags, define in VARIANTS:
            if flags and (not X86 or not self._flags_ok(flags)):
                continue
            objects += self.compiler.compile([os.path.join(CSRC, src)], output_dir=tmp,
                                             include_dirs=[CSRC], extra_postargs=BASE_FLAGS + flags,
                                             depends=[os.path.join(CSRC, h) for h in
                                                      ("hq_api.h", "hq_impl.h", "hq_simd.h")])
            if define:
                defines.append((define, "1"))
        objects += self.compiler.compile([os.path.join(CSRC, "hq_api.cpp")], output_dir=tmp,
                                         include_dirs=[CSRC], macros=defines,
                                         extra_postargs=BASE_FLAGS,
                                         depends=[os.path.join(CSRC, "hq_api.h")])
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.compiler.link_shared_object(objects, out, extra_postargs=["-pthread"],
                                         target_lang="c++")


setup(
    ext_modules=[Extension("hetero_qwen.kernels._hq_kernels", sources=[
        os.path.join(CSRC, s) for s in ("hq_api.cpp", "hq_scalar.cpp", "hq_avx2.cpp", "hq_avx512.cpp",
                                                  "hq_avx512bf16.cpp")])],
    cmdclass={"build_ext": BuildHQ},
)
