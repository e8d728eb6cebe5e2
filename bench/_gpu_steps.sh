# Shared by the bench/gpu_issue*.sh scripts (sourced, after they set PY and LOG): `run STEP
# LIMIT COMMAND...` runs one step under its own time limit (skipped unless ONLY names it,
# when ONLY is set), logging what it printed and how it ended; then torch's view of the
# machine goes to the log.
run() {
  local step=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$step,"* ]]; then return; fi
  echo "+ [$(date +%T), limit ${limit}s] $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
  echo "= exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU',
  'cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$LOG"
