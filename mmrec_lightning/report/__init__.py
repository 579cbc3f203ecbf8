"""An offline HTML report of a tested run (metrics per K, warm and cold items, training curves, modality
weights, a gallery of sample users' recommendations), and the same gallery and curves for W&B."""

from mmrec_lightning.report.callback import ReportWriter

__all__ = ["ReportWriter"]
