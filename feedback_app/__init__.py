"""The feedback app: database store, REST API, Gradio pages, candidate generation, export.

Light package: importing it loads no torch or gradio. Never imports ``reward``.
"""
