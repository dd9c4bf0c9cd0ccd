"""The offline training sidecar: datasets, PyTorch training, ONNX export, MLflow, push to the store.

Never imported by the IOC process (an import-linter contract and a test enforce it).
"""
