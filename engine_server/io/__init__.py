"""Files in and out: frames (video, folders, globs, PNG), .flo flows and .pgm masks, report.json.

The bottom layer: numpy and OpenCV only; every other part of the engine may use it.
"""
