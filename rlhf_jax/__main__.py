import os
import sys

from rlhf_jax.runner.cli import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# Leave without the interpreter's teardown: background runtime threads (XLA's, the native CPU
# kernels' worker pool) must not run while Python's objects are torn down under them. Every file
# the run keeps is closed or written atomically by now.
os._exit(code)
