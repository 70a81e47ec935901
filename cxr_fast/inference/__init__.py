"""Inference: the Predictor and load_model/predict (predictor.py), engines (torch, ONNX), export, the ONNX file,
Grad-CAM."""
