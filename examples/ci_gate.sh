#!/usr/bin/env bash
# A CI gate: run the batch job only when the Hyper3D Rodin account can pay for all of it.
#
#   TOTAL=2 examples/ci_gate.sh      # TOTAL: what the batch will cost, in credits
#
# Exit codes: the batch job's own when it ran; 1 when the account cannot pay for TOTAL;
# 2 when the balance could not be checked (no key, bad key, provider down).
# The default batch (examples/batch_job.py) makes 4 generations at 0.5 credits: TOTAL=2.
#
# Try it without a real account, against the bundled simulator (needs `pip install -e .`
# so that `spendguard` is on PATH):
#
#   spendguard simulate --port 8787 --hyper3d-credits 3 > /tmp/sim.env &
#   sleep 1 && . /tmp/sim.env
#   TOTAL=2 examples/ci_gate.sh      # covered: the batch runs and spends 2 credits
#   TOTAL=2 examples/ci_gate.sh      # 1 credit left: refused, the batch never starts
#   kill %1                          # stops the simulator (it frees the port)
set -euo pipefail

total="${TOTAL:-}"
if [[ -z "$total" ]]; then
  echo "ci_gate: set TOTAL to what the batch job will cost, in credits (e.g. TOTAL=2)" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"

status=0
spendguard check "$total" --provider hyper3d || status=$?
case "$status" in
  0)
    exec python "$here/batch_job.py"
    ;;
  1)
    echo "ci_gate: the Hyper3D account cannot pay for $total credits; batch job not started" >&2
    exit 1
    ;;
  *)
    echo "ci_gate: could not check the Hyper3D balance (exit $status); batch job not started" >&2
    exit 2
    ;;
esac
