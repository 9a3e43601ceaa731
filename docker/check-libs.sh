#!/usr/bin/env bash
# Prove that a (pruned) site-packages tree still loads: `ldd` of every shared library in it must
# resolve every dependency, and the libraries that torch, cuBLAS and cuDNN dlopen lazily (so ldd
# cannot see them) must be there. Exit status 1 with the offenders listed otherwise.
#
#   docker/check-libs.sh SITE_PACKAGES_DIR
#
# LD_LIBRARY_PATH is set to the folders that torch's RUNPATH names ($ORIGIN/../../nvidia/*/lib and
# torch/lib), so that a library found only through another one's RUNPATH is still checked against
# this tree. libcuda.so.1 is the one allowed miss: the NVIDIA container runtime mounts the driver.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 SITE_PACKAGES_DIR" >&2
  exit 2
fi
site="$(cd "$1" && pwd)"

lib_path="$site/torch/lib"
for dir in "$site"/nvidia/*/lib; do
  [ -d "$dir" ] && lib_path="$lib_path:$dir"
done

# Loaded with dlopen() by name, on first use: cuDNN's sub-libraries (libcudnn.so.9), NVRTC (torch's
# jiterator and libcaffe2_nvrtc, cuBLASLt, cuDNN's runtime-compiled engines), nvJitLink (cuSPARSE,
# cuSOLVER), torch's lazily loaded linear algebra, CUPTI's profiler host library.
dlopened=(
  torch/lib/libtorch_cuda_linalg.so
  torch/lib/libcaffe2_nvrtc.so
  nvidia/cudnn/lib/libcudnn_adv.so.9
  nvidia/cudnn/lib/libcudnn_cnn.so.9
  nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9
  nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.9
  nvidia/cudnn/lib/libcudnn_graph.so.9
  nvidia/cudnn/lib/libcudnn_heuristic.so.9
  nvidia/cudnn/lib/libcudnn_ops.so.9
  nvidia/cu13/lib/libnvrtc.so.13
  nvidia/cu13/lib/libnvrtc-builtins.so.13.0
  nvidia/cu13/lib/libnvJitLink.so.13
  nvidia/cu13/lib/libcublasLt.so.13
  nvidia/cu13/lib/libcusolver.so.12
  nvidia/cu13/lib/libcupti.so.13
  nvidia/cu13/lib/libnvperf_host.so
  nvidia/cusparselt/lib/libcusparseLt.so.0
  nvidia/nvshmem/lib/libnvshmem_host.so.3
  nvidia/nccl/lib/libnccl.so.2
)

status=0
for rel in "${dlopened[@]}"; do
  if [ ! -f "$site/$rel" ]; then
    echo "missing: $rel (loaded at run time by name)"
    status=1
  fi
done

checked=0
while IFS= read -r -d '' lib; do
  # Only ELF shared objects (skip linker scripts, bitcode, data that merely ends in .so).
  [ "$(head -c 4 "$lib" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  checked=$((checked + 1))
  out="$(LD_LIBRARY_PATH="$lib_path" ldd "$lib" 2>&1 || true)"
  missing="$(grep 'not found' <<<"$out" | grep -v 'libcuda\.so\.1 ' || true)"
  # A dependency found outside this tree and the system's folders would hide a pruned one.
  stray="$(grep -o '=> /[^ ]*' <<<"$out" | cut -c4- \
    | grep -v -E "^($site/|/lib/|/lib64/|/usr/lib/|/usr/lib64/|/usr/local/lib/)" || true)"
  missing="$missing${stray:+$'\n'resolved outside: $stray}"
  if [ -n "$missing" ]; then
    echo "unresolved in ${lib#"$site"/}:"
    echo "$missing"
    status=1
  fi
done < <(find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) -print0)

if [ "$status" = 0 ]; then
  echo "check-libs: $checked shared libraries under $site resolve (libcuda.so.1 comes from the driver)"
fi
exit "$status"
