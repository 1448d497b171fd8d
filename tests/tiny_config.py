"""The tiny experiment the CLI-level tests run (the quickstart cut to about half a minute)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")
TINY = f"""base: {QUICKSTART}
task: {{corpus_size: 300, n_eval_prompts: 4}}
pretrain: {{steps: 30, batch_size: 16}}
reward: {{n_prompts: 40, k: 2, epochs: 1, batch_size: 8}}
ppo: {{iterations: 4, batch_size: 8, minibatches: 1, epochs: 1}}
eval: {{samples_per_prompt: 1, best_of_n: 2}}
run: {{checkpoint_every: 2, progress: false, plots: false}}
"""
