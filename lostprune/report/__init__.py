"""The experiment report: the paper's figures (PNG), tables and guideline flags, as Markdown
and HTML, computed from an experiment's results store."""

from .render import guideline_flags, write_report
from .results import ExperimentResults

__all__ = ["ExperimentResults", "guideline_flags", "write_report"]
