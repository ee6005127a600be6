"""The Gradio web UI for visual search.

A server over someone's private images makes no outbound connection they did not ask for:
Gradio's launch telemetry and version check, and the Hugging Face hub's telemetry, are
switched off here, before any module of the UI imports Gradio, whatever the environment
says.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
