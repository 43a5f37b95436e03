"""Inference on saved models: the batched loop, the classifier, backends (torch/ONNX), export,
features, decoding."""
