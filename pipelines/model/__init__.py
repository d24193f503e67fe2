"""Numpy maths, no Spark: the model card and defaults, the trainer seam and exact fold-in,
the top-K kernels, the text-to-factor ridge map and the ONNX text encoder."""
