"""`python -m infer`: see `infer.cli`."""
from infer.cli import main

raise SystemExit(main())
