#!/bin/sh
# Entrypoint of the MR -> CT image: writes /output/<case>-ct.nii.gz (Hounsfield units, on the MR grid) for every
# case under /input holding <case>-t1.nii.gz.
exec "$(dirname "$0")/docker/run_task.sh" mr2ct "$@"
