"""Local HTTP/JSON control surface of a running fleet (127.0.0.1 only) and its client.

``start_control_server(fleet, port)`` serves it from a small stdlib thread; ``ControlClient``
is what ``fpgw-sim ctl`` uses. Bad payloads get a 400 with a message naming the field; no
request can take the fleet down.

    GET    /devices                         list devices
    GET    /devices/{serial}                one device
    POST   /devices                         add a device (DeviceSpec fields as JSON)
    DELETE /devices/{serial}                remove a device
    POST   /devices/{serial}/punches        {"n": 1, "at": "YYYY-MM-DD HH:MM:SS", "user_id": "..."}
    POST   /devices/{serial}/faults         {"name": "slow", "value": 0.5}
    DELETE /devices/{serial}/faults/{name}  switch a fault off
    POST   /devices/{serial}/clear-log      clear the log as at the keypad
    POST   /devices/{serial}/replace        {"new_serial": "...", "records": 0}
                                            or {"blank": true, "fp_version": 9}: a new empty unit
    POST   /devices/{serial}/factory-reset  users, templates and log gone, as from the terminal's menu
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from simulators.zk.config import ConfigError, spec_from_mapping
from simulators.zk.server import Fleet

log = logging.getLogger("simulators.zk.control")

MAX_BODY = 1 << 20


class ApiError(Exception):
    """An HTTP error with a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is default:
        return value
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


class _Handler(BaseHTTPRequestHandler):
    server_version = "fpgw-sim-control/1"
    fleet: Fleet

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s", format % args)

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        try:
            parts = [unquote(x) for x in self.path.split("?", 1)[0].strip("/").split("/") if x]
            self._send(200, self._route(method, parts))
        except ApiError as e:
            self._send(e.status, {"error": str(e)})
        except (ValueError, ConfigError) as e:
            self._send(400, {"error": str(e)})
        except KeyError as e:
            self._send(404, {"error": str(e.args[0]) if e.args else "not found"})
        except Exception as e:  # never let a request kill the control thread
            log.exception("control request failed")
            self._send(500, {"error": f"internal error: {e}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _route(self, method: str, parts: list[str]) -> Any:
        fleet = self.fleet
        if parts == ["health"] and method == "GET":
            return {"ok": True, "devices": len(fleet.devices)}
        if not parts or parts[0] != "devices":
            raise ApiError(404, f"no such endpoint: {method} {self.path}")
        if len(parts) == 1:
            if method == "GET":
                return [d.info() for d in fleet.devices]
            if method == "POST":
                spec = spec_from_mapping("device", self._body())
                return fleet.add(spec).info()
            raise ApiError(405, f"{method} not allowed on /devices")
        dev = fleet.device(parts[1])
        rest = parts[2:]
        if not rest:
            if method == "GET":
                return dev.info()
            if method == "DELETE":
                fleet.remove(dev.serial)
                return {"removed": parts[1]}
        elif rest == ["punches"] and method == "POST":
            body = self._body()
            n = _field(body, "n", int, 1)
            if not 0 <= n <= 100_000:
                raise ApiError(400, f"n: expected 0..100000, got {n}")
            at_text = _field(body, "at", str, None)
            at = None
            if at_text is not None:
                try:
                    at = datetime.strptime(at_text, "%Y-%m-%d %H:%M:%S")
                except ValueError:
                    raise ApiError(400, f"at: expected 'YYYY-MM-DD HH:MM:SS', got {at_text!r}") from None
            user_id = _field(body, "user_id", (str, int), None)
            return dev.add_punches(n, at=at, user_id=None if user_id is None else str(user_id))
        elif rest == ["faults"] and method == "POST":
            body = self._body()
            name = _field(body, "name", str, None)
            if name is None:
                raise ApiError(400, "name: required (a fault name)")
            dev.set_fault(name, body.get("value", True))
            return dev.info()
        elif rest == ["faults"] and method == "GET":
            return dev.faults
        elif len(rest) == 2 and rest[0] == "faults" and method == "DELETE":
            dev.clear_fault(rest[1])
            return dev.info()
        elif rest == ["clear-log"] and method == "POST":
            dev.clear_log()
            return dev.info()
        elif rest == ["factory-reset"] and method == "POST":
            dev.factory_reset()
            return dev.info()
        elif rest == ["replace"] and method == "POST":
            body = self._body()
            new_serial = _field(body, "new_serial", str, None)
            records = _field(body, "records", int, 0)
            blank = _field(body, "blank", bool, False)
            fp_version = _field(body, "fp_version", int, None)
            if new_serial is not None and any(d.serial == new_serial for d in fleet.devices):
                raise ApiError(409, f"new_serial: {new_serial!r} is already in this fleet")
            if fp_version is not None and not 1 <= fp_version <= 255:
                raise ApiError(400, f"fp_version: must be 1..255, got {fp_version}")
            if blank or fp_version is not None:
                dev.replace_blank(new_serial, fp_version)
            else:
                dev.replace(new_serial=new_serial, records=records)
            return dev.info()
        raise ApiError(404, f"no such endpoint: {method} {self.path}")


class ControlServer:
    """The running control endpoint."""

    def __init__(self, fleet: Fleet, port: int, host: str = "127.0.0.1") -> None:
        handler = type("Handler", (_Handler,), {"fleet": fleet})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="fpgw-sim-control",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


def start_control_server(fleet: Fleet, port: int = 0) -> ControlServer:
    """Serve the control API on 127.0.0.1:port (0 = any free port); stopped by fleet.stop()."""
    srv = ControlServer(fleet, port)
    fleet.control = srv
    return srv


class ControlClient:
    """Tiny JSON client for the control API (used by ``fpgw-sim ctl``)."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; raises ApiError with the server's message on 4xx/5xx."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", str(e))
            except (ValueError, AttributeError):
                msg = str(e)
            raise ApiError(e.code, msg) from None
        except urllib.error.URLError as e:
            raise ApiError(503, f"cannot reach the simulator control API at {self.url}: {e.reason}") from None
