#!/usr/bin/env bash
# Installs the built engine into a scratch prefix, builds the example consumer
# (docs/examples/consumer, a project that enables only CXX) against the installed CMake package,
# not the build tree, and runs it on a fixture model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -S "$root/docs/examples/consumer" -B "$scratch/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
grep -q 'project(engine_consumer LANGUAGES CXX)' "$root/docs/examples/consumer/CMakeLists.txt" ||
  { echo "install test: the example consumer must be a CXX-only project" >&2; exit 1; }
ninja -C "$scratch/consumer" >/dev/null
"$scratch/consumer/head_doctor" "$root/tests/fixtures/models/bloom-h4-l2"
echo "install test: the example consumer built against the installed package and ran"
