import sys

from rlhf_jax.runner.cli import main

sys.exit(main())
