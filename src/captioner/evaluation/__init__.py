"""Scoring captions as the papers do: split.py captions a split from its feature cache and
scores it (``captioner evaluate``), metrics.py wraps pycocoevalcap (BLEU, METEOR, ROUGE-L,
CIDEr), report.py writes the HTML page of a split (``captioner report``)."""
