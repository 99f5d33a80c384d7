"""A local HTTP server on 127.0.0.1 for the download tests."""

import http.server
import threading

import pytest


# --- A local HTTP server ----------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves ``server.routes[path] = (body, mode)``; mode "die" stops after half the body."""

  def do_GET(self):
    route = self.server.routes.get(self.path)
    if route is None:
      self.send_error(404)
      return
    body, mode = route
    self.send_response(200)
    self.send_header("Content-Type", "application/octet-stream")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if mode == "die":
      self.wfile.write(body[:len(body) // 2])
      self.wfile.flush()
      self.close_connection = True
      return
    self.wfile.write(body)

  def log_message(self, *args):
    del args


@pytest.fixture
def http_server():
  """A server on 127.0.0.1: ``server.routes`` to fill, ``server.url(path)`` to fetch."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  server.routes = {}
  server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()
  thread.join()
