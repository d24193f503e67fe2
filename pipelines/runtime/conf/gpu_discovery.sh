#!/usr/bin/env bash
# Spark GPU discovery script (spark.{driver,executor}.resource.gpu.discoveryScript): prints
# the GPUs this node offers in Spark's ResourceInformation JSON, e.g.
#   {"name": "gpu", "addresses": ["0", "1"]}
# Honours CUDA_VISIBLE_DEVICES (a container or YARN may restrict the visible devices). With
# no GPU (or no nvidia-smi) it prints an empty address list: an executor that requires a GPU
# then fails to start with Spark's own clear message instead of a script error.
set -euo pipefail

addresses=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
  IFS=',' read -r -a addresses <<< "${CUDA_VISIBLE_DEVICES// /}"
elif command -v nvidia-smi >/dev/null 2>&1; then
  mapfile -t addresses < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi

json=""
for a in "${addresses[@]}"; do
  a="${a//[[:space:]]/}"
  [[ -z "$a" ]] && continue
  json+="${json:+, }\"$a\""
done
echo "{\"name\": \"gpu\", \"addresses\": [${json}]}"
