"""groco: turn a folder of unlabeled images into a visual search engine.

Train an encoder with GroCo (Group Ordering Constraints) on your own images, export it to
ONNX, embed the collection into a FAISS index and search it from a Gradio web UI.
"""

__version__ = "0.1.0"
