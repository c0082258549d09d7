"""Export: turns a LLaVA checkpoint plus a pruning method into ONNX graphs and a manifest."""
