"""Subscribers to the training engines' events (base.Callback): the run log, progress, early
stopping, trackers (TensorBoard, MLflow, Weights & Biases) and tune's pruning."""

from warmstart.callbacks.base import Callback, CallbackList, Control

__all__ = ["Callback", "CallbackList", "Control"]
