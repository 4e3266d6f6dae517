#!/usr/bin/env bash
# Runs on the lent NVIDIA machine (the `device` tool; Ubuntu 24.04, a driver installed, no Docker, no network):
# ansible-core from carried wheels (.whl), then preflight + nvidia_driver (provider preinstalled) and the doctor,
# for real, connection local. Everything it printed goes to $OUT; tests/fixtures/doctor/ keeps it.
# The wheels (.whl/, ignored by git) are made on the control node for the machine's Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ansible-core==2.19.14 cffi==2.1.1 cryptography==50.0.2 Jinja2==3.1.6 MarkupSafe==3.0.4 packaging==26.4 \
#     pycparser==3.12 PyYAML==6.0.4 resolvelib==1.2.1 prometheus-client==0.26.0
# then, with the device tool: run(command="bash tests/device/run.sh", carry=[".whl"])
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH ANSIBLE_CONFIG=$PWD/ansible.cfg ANSIBLE_NOCOLOR=1
export LLM_REPORT_DIR=$OUT/reports ANSIBLE_LOCAL_TEMP=/tmp/ansible-local
out=${OUT:?}
{
  echo "## uname -a"; uname -a; echo "## /etc/os-release"; cat /etc/os-release
  echo "## /proc/driver/nvidia/version"; cat /proc/driver/nvidia/version
  echo "## nvidia-smi -L"; nvidia-smi -L
  echo "## dpkg-query (nvidia)"; dpkg-query -W -f='${binary:Package}\t${Version}\t${db:Status-Abbrev}\t${db:Status-Want}\n' '*nvidia*' 2>&1 | head -60
  echo "## docker"; command -v docker || echo "no docker"
  echo "## ansible"; ansible-playbook --version | head -2
} >"$out/system.txt" 2>&1
ansible-playbook -i tests/device/inventory.ini tests/device/driver.yml >"$out/driver.log" 2>&1
echo "driver.yml rc=$?" | tee -a "$out/driver.log"
# A second run changes nothing (the local facts written by the first are already there).
ansible-playbook -i tests/device/inventory.ini tests/device/driver.yml >"$out/driver-again.log" 2>&1
echo "driver.yml again rc=$?" | tee -a "$out/driver-again.log"
cp /etc/ansible/facts.d/nvidia_driver.fact "$out/nvidia_driver.fact" 2>/dev/null
ansible-playbook -i tests/device/inventory.ini playbooks/doctor.yml -e doctor_output="$out/doctor.json" >"$out/doctor.log" 2>&1
echo "doctor.yml rc=$?" | tee -a "$out/doctor.log"
ansible-playbook -i tests/device/inventory.ini playbooks/doctor.yml --check -e doctor_output=/tmp/doctor-check.json \
  >"$out/doctor-check.log" 2>&1
echo "doctor.yml --check rc=$?" | tee -a "$out/doctor-check.log"
for f in driver.log driver-again.log doctor.log doctor-check.log; do grep -A1 RECAP "$out/$f"; done
grep -A12 'TASK \[Table\]' "$out/doctor.log"
