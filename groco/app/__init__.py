"""The Gradio web UI for visual search."""
