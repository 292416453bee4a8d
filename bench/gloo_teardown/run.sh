#!/usr/bin/env bash
# Runs race.py under torchrun (2 CPU ranks, rank 1 under gdb with hold.gdb), ending
# with interpreter finalization (END=return) and without it (END=os_exit).
# Needs gdb and .venv-torch. Prints each run's gdb report and torchrun's exit status.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
torch_bin="$here/../../.venv-torch/bin"
if [ "${RANK:-}" != "" ]; then  # torchrun --no-python runs this script as each rank
  [ "$RANK" = 1 ] && exec gdb -q -batch -iex "set debuginfod enabled off" -x "$here/hold.gdb" \
      --args "$torch_bin/python" -u "$here/race.py"
  exec "$torch_bin/python" -u "$here/race.py"
fi
for end in return os_exit; do
  echo "### END=$end"
  END=$end OMP_NUM_THREADS=1 "$torch_bin/torchrun" --standalone --nproc_per_node=2 --no-python "$0" 2>&1 \
    | grep -E "^===|^#[0-9]+ .*(PyThread_exit|pthread_exit|terminate|AcquireThread|AsyncWork|runLoop)|terminate called|exitcode|Signal"
  echo "torchrun exit status: ${PIPESTATUS[0]}"
done
