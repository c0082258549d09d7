"""Accuracy of any engine dir on a question file (`cli.py eval`): reading and checking the questions (data.py),
scoring an answer (scoring.py), the FLOPs of one request (flops.py), running and aggregating (evaluate.py) and the
printed summary (report.py). No torch: it runs wherever the runtime runs."""
