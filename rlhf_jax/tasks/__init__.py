"""Built-in offline tasks (corpus generator + prompts + gold reward), selected by name."""

from rlhf_jax.tasks.registry import SENTIMENT_REVIEWS, TASKS, Task, get_task, register_task
from rlhf_jax.tasks.sentiment import generate_corpus

__all__ = ["SENTIMENT_REVIEWS", "TASKS", "Task", "generate_corpus", "get_task", "register_task"]
