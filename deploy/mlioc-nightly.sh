#!/usr/bin/env bash
# The nightly continual-learning cycle for one model (docs/how-to/training.md, "The nightly job"):
# train on yesterday's recorded data, warm-started from the champion, gate against the champion on
# the newest held-out data, and push a winner into the store (the IOC validates and loads it).
#
#   deploy/mlioc-nightly.sh CONFIG MODEL
#
# Environment: MLIOC_HOME (the checkout, default: this script's parent), MLFLOW_TRACKING_URI (the
# facility's MLflow server; default: a sqlite file in MLIOC_HOME). Exit status: that of `mlioc train`
# (0 = finished, promoted or not; 1 = bad data, failed parity/validation, unreachable server).
set -euo pipefail
MLIOC_HOME=${MLIOC_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
CONFIG=${1:?usage: mlioc-nightly.sh CONFIG MODEL}
MODEL=${2:?usage: mlioc-nightly.sh CONFIG MODEL}
cd "$MLIOC_HOME"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$MLIOC_HOME/mlflow.db}
START=$(date -u -d 'yesterday 00:00' +%Y-%m-%dT%H:%M:%SZ)
END=$(date -u -d 'today 00:00' +%Y-%m-%dT%H:%M:%SZ)
echo "$(date -u +%FT%TZ) mlioc nightly: $MODEL from $CONFIG, data $START .. $END, tracking $MLFLOW_TRACKING_URI"
exec "$MLIOC_HOME/.venv/bin/mlioc" train "$CONFIG" --model "$MODEL" --data recorded \
    --start "$START" --end "$END" --push --no-progress
