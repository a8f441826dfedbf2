"""Resume: what the training loop received, saved as a state and loaded at any topology
(docs/architecture.md, "Resume")."""

from loader.resume.keeper import ResumeKeeper
from loader.resume.state import LoaderState, ResumeError, Topology

__all__ = ["LoaderState", "ResumeError", "ResumeKeeper", "Topology"]
