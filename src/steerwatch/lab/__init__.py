"""The reward-hacking lab: coding tasks with impossible variants, a sandbox that executes the
model's code, single-turn and agentic episodes labelled by execution, steering settings compared on
the same tasks, and the detectors scored against what the model did. See docs/lab.md."""
from .episodes import ModelResponder, Reply, Setting, read_episodes, run_episodes
from .sandbox import Limits, RunResult, isolation, run_tests
from .static import special_case_reasons
from .tasks import VARIANTS, Task, check_tasks, humaneval_tasks, load_task_file, select

__all__ = ["VARIANTS", "Limits", "ModelResponder", "Reply", "RunResult", "Setting", "Task", "check_tasks",
           "humaneval_tasks", "isolation", "load_task_file", "read_episodes", "run_episodes", "run_tests", "select",
           "special_case_reasons"]
