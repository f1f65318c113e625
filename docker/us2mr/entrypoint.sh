#!/bin/sh
# Entrypoint of the ultrasound -> MR image: writes /output/<case>-t2w.nii.gz (on the ultrasound's grid) for every
# case under /input holding <case>-us.nii.gz; pass --targets t2w t2f for FLAIR as well.
exec "$(dirname "$0")/docker/run_task.sh" us2mr "$@"
