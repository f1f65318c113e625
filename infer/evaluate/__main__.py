"""`python -m infer.evaluate`: see `infer.evaluate.cli`."""
from infer.evaluate.cli import main

raise SystemExit(main())
