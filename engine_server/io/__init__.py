"""Files in and out: frames (video, folders, globs, PNG), .flo flows and .pgm masks, report.json, and the
scratch folder where multi-pass keeps its state.

The bottom layer: numpy and OpenCV only; every other part of the engine may use it.
"""
