"""A BKD client that pulls the central's punch feed by cursor over HTTP, all the time, in a thread.

Used by the forwarding end-to-end test and the chaos harness: whatever it received (as punch keys) is compared with
the simulators' ground truth; transport errors (central down) are counted and retried.
"""

from __future__ import annotations

import threading
import time

import httpx


class BkdPuller:
    """A BKD client pulling the feed by cursor, all the time, straight from the central API."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.keys: list[tuple[str, str, str, int, int]] = []
        self.offices: dict[str, set[str]] = {}
        self.errors: list[str] = []
        self.pages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bkd-puller")
        self.cursor = ""

    def _run(self) -> None:
        while True:
            finished = self._stop.is_set()
            try:
                r = self.client.get("/api/v1/punches", params={"cursor": self.cursor, "limit": 97})
                r.raise_for_status()
            except httpx.HTTPError as exc:
                self.errors.append(str(exc))
                if finished:
                    return
                time.sleep(0.1)
                continue
            doc = r.json()
            self.pages += 1
            for i in doc["items"]:
                self.keys.append((i["device_serial"], i["device_user_id"], i["device_time"], i["state"], i["verify"]))
                self.offices.setdefault(i["office_code"], set()).add(i["device_serial"])
            self.cursor = doc["next_cursor"]
            if finished and not doc["has_more"]:
                return
            if not doc["has_more"]:
                time.sleep(0.05)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """Pull until caught up with everything stored, then stop."""
        self._stop.set()
        self._thread.join(30)
        self.client.close()
