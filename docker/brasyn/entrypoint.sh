#!/bin/sh
# Entrypoint of the BraSyn image: writes /output/<case>-<missing>.nii.gz for every case under /input.
exec "$(dirname "$0")/docker/run_task.sh" brasyn "$@"
