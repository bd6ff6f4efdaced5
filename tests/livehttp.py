"""An app on a real socket (werkzeug, threaded): the one live-server helper every test package uses."""

from __future__ import annotations

import threading


class LiveServer:
    def __init__(self, app, handler=None) -> None:  # noqa: ANN001
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.base = f"{self.url}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)
