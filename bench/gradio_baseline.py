"""The baseline the feedback benchmark measures against: the simplest thing a user could write.

A bare Gradio app whose one event stores one SQLite row per submission (a new connection and a commit
per call), with Gradio's default queue. Run: python bench/gradio_baseline.py DB PORT
"""

import sqlite3
import sys
import time

from rlhf.runtime import apply_offline_env


def main() -> None:
    apply_offline_env()
    import gradio as gr

    db, port = sys.argv[1], int(sys.argv[2])
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rankings (id INTEGER PRIMARY KEY, reviewer TEXT, item INTEGER, "
                     "ranks TEXT, created_at REAL)")

    def submit(reviewer: str, item: float, ranks: str) -> str:
        with sqlite3.connect(db, timeout=30) as conn:
            cur = conn.execute("INSERT INTO rankings (reviewer, item, ranks, created_at) VALUES (?, ?, ?, ?)",
                               (reviewer, int(item), ranks, time.time()))
        return f"stored {cur.lastrowid}"

    with gr.Blocks() as demo:
        reviewer, item, ranks = gr.Textbox(label="reviewer"), gr.Number(label="item"), gr.Textbox(label="ranks")
        out = gr.Textbox(label="result")
        gr.Button("Submit").click(submit, [reviewer, item, ranks], out, api_name="submit")
    demo.queue().launch(server_name="127.0.0.1", server_port=port, share=False, footer_links=[],
                        show_error=True, quiet=True)


if __name__ == "__main__":
    main()
