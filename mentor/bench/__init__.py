"""Benchmarks anyone can rerun (nothing below the CLI imports this folder):

- `quality`: every method on the standard suite (`mentor bench quality`, `bench report`);
- `speed`: label/train throughput and teacher pools (`mentor bench speed`, `bench pool`);
- `llm`: an LLM as teacher, its scoring modes and the students distilled from it (`mentor bench llm`);
- `ensemble`: several teachers, each alone and combined (`mentor bench ensemble`).
"""

from .quality import (BASE_METHODS, chosen_on_validation, materialise, quality, read_rows, report, report_rows,
                      select_datasets, suite_configs, summarize, write_synthetic_margin)
from .speed import best_of, machine_info, pool_speed, speed

__all__ = ["BASE_METHODS", "best_of", "chosen_on_validation", "machine_info", "materialise", "pool_speed", "quality",
           "read_rows", "report", "report_rows", "select_datasets", "speed", "suite_configs", "summarize",
           "write_synthetic_margin"]
