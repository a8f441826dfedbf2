"""Exact evaluation: results per sample, padding dropped, every planned sample once over all
ranks, certified by one collective at the end (docs/architecture.md, "Evaluation")."""

from loader.eval.certificate import EvalCertificateError, id_checksum, planned_ids
from loader.eval.exact import EvalTotals, ExactEval

__all__ = ["EvalCertificateError", "EvalTotals", "ExactEval", "id_checksum", "planned_ids"]
